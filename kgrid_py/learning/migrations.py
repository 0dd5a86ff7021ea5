"""A small numbered migrations runner: the same SQLAlchemy DDL on SQLite and PostgreSQL.

Each migration is a function ``(connection) -> None`` numbered by its place in
:data:`MIGRATIONS`; ``kgrid_schema_version`` records the ones applied, with the time. Migrations
run in one transaction each, under a lock where the database has one (PostgreSQL advisory lock),
so two processes opening one store at once do not both apply the same step. A store newer than
this code (a higher version than it knows) is refused rather than written to.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

__all__ = ["MIGRATIONS", "SchemaTooNew", "current_version", "migrate"]

_LOCK_KEY = 0x6B67726964  # "kgrid": the advisory lock id on PostgreSQL

_version = sa.Table(
    "kgrid_schema_version",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at_us", sa.BigInteger, nullable=False),
)


class SchemaTooNew(RuntimeError):
    """Raised when the store was migrated by a newer kgrid-py than this one."""


def _v1_capture(conn: Connection) -> None:
    """calls, outcomes, feedback and their indexes (tables as defined in store.py at version 1)."""
    from kgrid_py.learning.store import metadata  # the tables are declared once, next to their reader

    metadata.create_all(conn, checkfirst=True)


MIGRATIONS: list[Callable[[Connection], None]] = [_v1_capture]


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table(_version.name):
        return 0
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(_version.c.version), 0))).scalar_one())


def migrate(engine: Engine) -> int:
    """Apply every migration the store lacks; return the schema version it is at."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        _version.create(conn, checkfirst=True)
        have = current_version(conn)
        if have > len(MIGRATIONS):
            raise SchemaTooNew(
                f"the capture store is at schema version {have}; this kgrid-py knows up to {len(MIGRATIONS)}"
            )
        for number, step in enumerate(MIGRATIONS[have:], start=have + 1):
            step(conn)
            conn.execute(_version.insert().values(version=number, applied_at_us=time.time_ns() // 1000))
        return len(MIGRATIONS)
