"""The capture store: calls, outcomes and feedback, in SQLite (WAL) or PostgreSQL, via SQLAlchemy Core.

``CaptureStore.open(url)`` takes a path, ``sqlite:///path`` or ``postgresql://...`` (psycopg 3),
creates and migrates the schema (:mod:`kgrid_py.learning.migrations`), and returns a store whose
writes are one transaction per group: :meth:`CaptureStore.write_calls` commits a whole list or
nothing, which is what group commit in the library and the activator builds on. Reads for
monitoring are columnar (:meth:`CaptureStore.calls_table` returns a pyarrow Table).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from kgrid_py.learning.ids import new_id
from kgrid_py.learning.migrations import migrate
from kgrid_py.learning.records import COLUMNS, CallRecord

__all__ = ["CaptureStore", "StoreError", "calls", "feedback", "metadata", "outcomes", "store_url"]

SQLITE_BUSY_TIMEOUT_MS = 10_000
READ_CHUNK_ROWS = 65_536

metadata = sa.MetaData()

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("ts_us", sa.BigInteger, nullable=False),
    sa.Column("site", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("caller", sa.Text, nullable=False),
    sa.Column("ko_id", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("content_digest", sa.Text, nullable=False),
    sa.Column("model_digest", sa.Text, nullable=False),
    sa.Column("function", sa.Text, nullable=False),
    sa.Column("subject_key", sa.Text, nullable=True),
    sa.Column("inputs_received", sa.Text, nullable=False),
    sa.Column("inputs_used", sa.Text, nullable=False),
    sa.Column("outputs", sa.Text, nullable=True),
    sa.Column("warnings", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("latency_us", sa.Integer, nullable=False),
    sa.Index("ix_calls_ko_version_function_site_ts", "ko_id", "version", "function", "site", "ts_us"),
    sa.Index("ix_calls_subject_key", "subject_key"),
)

outcomes = sa.Table(
    "outcomes",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("site", sa.Text, nullable=False),
    sa.Column("subject_key", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("event", sa.Integer, nullable=True),
    sa.Column("event_date", sa.Text, nullable=True),
    sa.Column("followup_date", sa.Text, nullable=True),
    sa.Column("competing_event", sa.Integer, nullable=True),
    sa.Column("competing_date", sa.Text, nullable=True),
    sa.Column("value", sa.Float(precision=53), nullable=True),
    sa.Column("value_date", sa.Text, nullable=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("row_digest", sa.Text, nullable=False),
    sa.Column("imported_at_us", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("site", "subject_key", "outcome", "row_digest", name="uq_outcomes_row"),
    sa.Index("ix_outcomes_subject_key", "subject_key"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("capture_id", sa.Text, nullable=False),
    sa.Column("ts_us", sa.BigInteger, nullable=False),
    sa.Column("site", sa.Text, nullable=False),
    sa.Column("caller", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("override_reason", sa.Text, nullable=True),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("ix_feedback_capture_id", "capture_id"),
)

_ARROW_TYPES: dict[str, pa.DataType] = {
    "ts_us": pa.int64(),
    "latency_us": pa.int64(),
}


class StoreError(RuntimeError):
    """Raised when the capture store cannot be opened, read or written; says which store and why."""


def store_url(url: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL for a path, ``sqlite:///path`` or ``postgresql://...`` (psycopg 3 driver)."""
    text = os.fspath(url)
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    if text.startswith(("postgresql+psycopg://", "sqlite://")):
        return text
    if "://" in text:
        raise StoreError(f"capture store URL {text!r}: use a path, sqlite:///path or postgresql://...")
    return "sqlite:///" + str(Path(text).expanduser().absolute())


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


SQLITE_SYNCHRONOUS = ("normal", "full")


def _sqlite_engine(url: str) -> Engine:
    """A WAL engine. ``?synchronous=normal`` (the default) commits survive a crash of the process
    (``kill -9``) and of anything but the machine; ``?synchronous=full`` also a power loss, at one
    fsync per commit (0.7 to 5.5 ms on the disks measured, which every answer would wait for)."""
    parsed = sa.engine.make_url(url)
    synchronous = parsed.query.get("synchronous", "normal")
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise StoreError(f"capture store: synchronous={synchronous!r}; use one of {', '.join(SQLITE_SYNCHRONOUS)}")
    parsed = parsed.difference_update_query(["synchronous"])
    path = parsed.database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("kgrid_write") else "BEGIN")

    return engine


class CaptureStore:
    """A migrated capture store. Thread-safe: each method takes its own pooled connection."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url  # password hidden
        # write_rows keeps one driver connection of its own: SQLAlchemy's checkout, BEGIN event and
        # reset-on-return cost about 370 us of CPU per commit, more than a small group's inserts.
        self._rows_lock = threading.Lock()
        self._rows_conn: Any = None
        self._now_conn: Any = None  # write_rows_now's: never waits for a lock, never checkpoints

    @classmethod
    def open(cls, url: str | os.PathLike[str]) -> CaptureStore:
        """Open (creating and migrating) the store at ``url``; raises :class:`StoreError` with the cause."""
        full = store_url(url)
        redacted = _redact(full)
        try:
            if full.startswith("sqlite"):
                engine = _sqlite_engine(full)
            else:
                engine = sa.create_engine(full, pool_pre_ping=True, pool_size=4, max_overflow=4, pool_timeout=10)
            migrate(engine.execution_options(kgrid_write=True))
        except StoreError:
            raise
        except Exception as exc:  # the driver's errors, translated at this one boundary
            raise StoreError(f"cannot open capture store {redacted}: {_cause(exc)}") from exc
        return cls(engine, redacted)

    def __repr__(self) -> str:
        return f"<CaptureStore {self.url}>"

    # -- writing -------------------------------------------------------------------------------

    def write_calls(self, records: Sequence[CallRecord]) -> None:
        """Insert every record in one transaction: all are committed, or none and StoreError."""
        if not records:
            return
        rows = [tuple(getattr(r, name) for name in COLUMNS) for r in records]
        self._write_raw(self._insert_calls_sql, rows)

    def write_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """:meth:`write_calls` for rows already in ``COLUMNS`` order (the capture writers' path).

        One transaction on a driver connection kept for this (one writer at a time). A kept
        PostgreSQL connection found broken (a restarted server) is replaced and the group tried
        once more on a fresh one; the primary key makes a second insert of committed rows fail, never count
        twice. Raises :class:`StoreError` when the rows were not committed."""
        if not rows:
            return
        rows = list(rows)
        with self._rows_lock:
            for attempt in (1, 2):
                fresh = self._rows_conn is None
                try:
                    if fresh:
                        self._rows_conn = self.engine.raw_connection()
                    self._insert(self._rows_conn, rows)
                    return
                except Exception as exc:
                    self._drop("_rows_conn")
                    # Only a server's dropped session is worth a second try: a locked SQLite file
                    # has already waited its busy timeout, and a second wait would outlast the
                    # requests waiting for this commit.
                    if fresh or attempt == 2 or self.engine.dialect.name == "sqlite":
                        raise StoreError(f"capture store {self.url}: write failed: {_cause(exc)}") from exc

    @property
    def writes_without_fsync(self) -> bool:
        """Whether a commit here costs no fsync (SQLite, synchronous=normal): cheap enough to run on an
        event loop, where a thread hop would cost more than the commit."""
        return self.engine.dialect.name == "sqlite" and self._synchronous() == 1

    def _synchronous(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())

    def write_rows_now(self, rows: Sequence[tuple[Any, ...]]) -> bool:
        """:meth:`write_rows` on SQLite without waiting: False, nothing written, if another writer
        holds the lock (the caller then hands the rows to a thread that may wait); raises
        :class:`StoreError` when they cannot be written. Its connection never checkpoints the WAL
        (a checkpoint writes the database and fsyncs it): :meth:`checkpoint` does, from a thread."""
        if not rows:
            return True
        try:
            if self._now_conn is None:
                self._now_conn = self.engine.raw_connection()
                self._now_conn.execute("PRAGMA busy_timeout=0")
                self._now_conn.execute("PRAGMA wal_autocheckpoint=0")
            self._insert(self._now_conn, list(rows))
            return True
        except Exception as exc:
            if "locked" in str(exc) or "busy" in str(exc):  # BEGIN IMMEDIATE found another writer
                with contextlib.suppress(Exception):
                    self._now_conn.rollback()
                return False
            self._drop("_now_conn")
            raise StoreError(f"capture store {self.url}: write failed: {_cause(exc)}") from exc

    def checkpoint(self) -> None:
        """Copy the WAL into the database where no reader needs it (SQLite; PASSIVE: waits for no one)."""
        if self.engine.dialect.name != "sqlite":
            return
        with self._rows_lock:
            try:
                if self._rows_conn is None:
                    self._rows_conn = self.engine.raw_connection()
                self._rows_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as exc:
                self._drop("_rows_conn")
                raise StoreError(f"capture store {self.url}: checkpoint failed: {_cause(exc)}") from exc

    def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        cursor = conn.cursor()
        try:
            if self.engine.dialect.name == "sqlite":  # autocommit mode (see _sqlite_engine): explicit
                cursor.execute("BEGIN IMMEDIATE")
                cursor.executemany(self._insert_calls_sql, rows)
                cursor.execute("COMMIT")
            else:
                cursor.executemany(self._insert_calls_sql, rows)
                conn.commit()
        finally:
            cursor.close()

    def _drop(self, name: str) -> None:
        """Throw away the kept connection ``name`` (after a failure): never back into the pool."""
        conn = getattr(self, name)
        setattr(self, name, None)
        if conn is None:
            return
        with contextlib.suppress(Exception):  # being thrown away: its own error says nothing new
            conn.rollback()
        with contextlib.suppress(Exception):
            conn.invalidate()

    def write_feedback(
        self,
        capture_id: str,
        kind: str,
        *,
        site: str,
        caller: str,
        override_reason: str | None = None,
        detail: Any = None,
        ts_us: int | None = None,
    ) -> str:
        """Store one feedback row about the call ``capture_id``; returns its id."""
        row = {
            "id": new_id(),
            "capture_id": capture_id,
            "ts_us": time.time_ns() // 1000 if ts_us is None else ts_us,
            "site": site,
            "caller": caller,
            "kind": kind,
            "override_reason": override_reason,
            "detail": json.dumps(detail if detail is not None else {}, separators=(",", ":"), default=str),
        }
        self._write(feedback.insert(), [row])
        return row["id"]

    def write_feedback_rows(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """Store several feedback rows (keys as :meth:`write_feedback`'s arguments) in one transaction."""
        now = time.time_ns() // 1000
        full = [
            {
                "id": new_id(),
                "capture_id": r["capture_id"],
                "ts_us": r.get("ts_us") or now,
                "site": r["site"],
                "caller": r["caller"],
                "kind": r["kind"],
                "override_reason": r.get("override_reason"),
                "detail": json.dumps(r.get("detail") or {}, separators=(",", ":"), default=str),
            }
            for r in rows
        ]
        if full:
            self._write(feedback.insert(), full)
        return [r["id"] for r in full]

    def calls_by_id(
        self, ids: Iterable[str], columns: Sequence[str] = ("id", "ko_id", "function")
    ) -> dict[str, dict[str, Any]]:
        """The named columns of the calls with these ids (missing ids are absent from the answer)."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        chosen = [calls.c[name] for name in dict.fromkeys(["id", *columns])]
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(*chosen).where(calls.c.id.in_(wanted))).mappings().all()
        except Exception as exc:
            raise StoreError(f"capture store {self.url}: read failed: {_cause(exc)}") from exc
        return {r["id"]: dict(r) for r in rows}

    def _write(self, statement: sa.Executable, rows: list[dict[str, Any]]) -> None:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(kgrid_write=True)
                with conn.begin():
                    conn.execute(statement, rows)
        except Exception as exc:
            raise StoreError(f"capture store {self.url}: write failed: {_cause(exc)}") from exc

    def _write_raw(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """The driver's own executemany: SQLAlchemy's per-row processing costs more than the insert."""
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(kgrid_write=True)
                with conn.begin():
                    conn.exec_driver_sql(sql, rows)
        except Exception as exc:
            raise StoreError(f"capture store {self.url}: write failed: {_cause(exc)}") from exc

    @property
    def _mark(self) -> str:
        return "?" if self.engine.dialect.paramstyle == "qmark" else "%s"

    @property
    def _insert_calls_sql(self) -> str:
        marks = ", ".join([self._mark] * len(COLUMNS))
        return f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({marks})"

    def prune(self, before_us: int) -> int:
        """Delete calls (and their feedback) older than ``before_us``; returns the calls deleted."""
        old = sa.select(calls.c.id).where(calls.c.ts_us < before_us)
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(kgrid_write=True)
                with conn.begin():
                    conn.execute(feedback.delete().where(feedback.c.capture_id.in_(old)))
                    return int(conn.execute(calls.delete().where(calls.c.ts_us < before_us)).rowcount)
        except Exception as exc:
            raise StoreError(f"capture store {self.url}: prune failed: {_cause(exc)}") from exc

    # -- reading -------------------------------------------------------------------------------

    def calls_table(
        self,
        *,
        ko_id: str | None = None,
        version: str | None = None,
        function: str | None = None,
        site: str | None = None,
        since: int | dt.datetime | dt.date | None = None,
        until: int | dt.datetime | dt.date | None = None,
        columns: Iterable[str] | None = None,
    ) -> pa.Table:
        """Calls matching the filters, oldest first, as a pyarrow Table (JSON columns stay JSON text).

        ``since``/``until`` are UTC epoch microseconds, an aware datetime, or a date (midnight
        UTC); ``columns`` limits what is read (default: every column of ``calls``).
        """
        names, sql, params = self._calls_sql(ko_id, version, function, site, since, until, columns)
        chunks: list[list[Any]] = [[] for _ in names]
        try:
            with self.engine.connect() as conn:
                cursor = conn.connection.dbapi_connection.cursor()
                try:
                    cursor.execute(sql, tuple(params))
                    while part := cursor.fetchmany(READ_CHUNK_ROWS):
                        for target, values in zip(chunks, zip(*part, strict=True), strict=True):
                            target.extend(values)
                finally:
                    cursor.close()
                conn.rollback()
        except Exception as exc:
            raise StoreError(f"capture store {self.url}: read failed: {_cause(exc)}") from exc
        return pa.table(
            {n: pa.array(v, type=_ARROW_TYPES.get(n, pa.string())) for n, v in zip(names, chunks, strict=True)}
        )

    def _calls_sql(
        self,
        ko_id: str | None,
        version: str | None,
        function: str | None,
        site: str | None,
        since: int | dt.datetime | dt.date | None,
        until: int | dt.datetime | dt.date | None,
        columns: Iterable[str] | None,
    ) -> tuple[list[str], str, list[Any]]:
        names = list(columns) if columns is not None else list(COLUMNS)
        unknown = [n for n in names if n not in calls.c]
        if unknown:
            raise ValueError(f"calls has no column(s) {', '.join(unknown)}")
        # Plain SQL over whitelisted column names and the driver's cursor: SQLAlchemy's Row objects
        # cost ~7x the fetch itself, and monitoring reads millions of rows.
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("ko_id", ko_id), ("version", version), ("function", function), ("site", site)):
            if value is not None:
                where.append(f"{column} = {self._mark}")
                params.append(value)
        if since is not None:
            where.append(f"ts_us >= {self._mark}")
            params.append(to_us(since))
        if until is not None:
            where.append(f"ts_us < {self._mark}")
            params.append(to_us(until))
        sql = f"SELECT {', '.join(names)} FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts_us, id"
        return names, sql, params

    def iter_calls(
        self,
        *,
        ko_id: str | None = None,
        site: str | None = None,
        since: int | dt.datetime | dt.date | None = None,
        until: int | dt.datetime | dt.date | None = None,
        columns: Iterable[str] | None = None,
        chunk_rows: int = READ_CHUNK_ROWS,
    ) -> Iterator[pa.Table]:
        """Calls matching the filters, oldest first, as Tables of at most ``chunk_rows`` rows each.

        Memory stays bounded by one chunk: PostgreSQL reads through a server-side cursor, SQLite
        steps its cursor as rows are fetched.
        """
        names, sql, params = self._calls_sql(ko_id, None, None, site, since, until, columns)
        try:
            with self.engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                postgres = self.engine.dialect.name == "postgresql"
                cursor = raw.cursor(name="kgrid_export") if postgres else raw.cursor()
                try:
                    cursor.execute(sql, tuple(params))
                    while part := cursor.fetchmany(chunk_rows):
                        values = list(zip(*part, strict=True))
                        yield pa.table(
                            {
                                n: pa.array(v, type=_ARROW_TYPES.get(n, pa.string()))
                                for n, v in zip(names, values, strict=True)
                            }
                        )
                finally:
                    cursor.close()
                conn.rollback()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"capture store {self.url}: read failed: {_cause(exc)}") from exc

    def feedback_table(self, *, capture_ids: Iterable[str] | None = None) -> pa.Table:
        """Feedback rows (all, or those about the given calls), as a pyarrow Table."""
        query = sa.select(feedback).order_by(feedback.c.ts_us, feedback.c.id)
        if capture_ids is not None:
            query = query.where(feedback.c.capture_id.in_(list(capture_ids)))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        names = [c.name for c in feedback.c]
        types = {"ts_us": pa.int64()}
        return pa.table({n: pa.array([r[n] for r in rows], type=types.get(n, pa.string())) for n in names})

    def count_calls(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(calls)).scalar_one())

    def close(self) -> None:
        with self._rows_lock:
            for name in ("_rows_conn", "_now_conn"):
                conn = getattr(self, name)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    setattr(self, name, None)
        self.engine.dispose()

    def __enter__(self) -> CaptureStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def to_us(value: int | dt.datetime | dt.date) -> int:
    """UTC epoch microseconds from an int (already µs), an aware datetime, or a date (midnight UTC)."""
    if isinstance(value, bool):
        raise TypeError("a time must be microseconds, a datetime or a date, not a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"datetime {value.isoformat()} has no time zone; give UTC explicitly")
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, dt.date):
        return to_us(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC))
    raise TypeError(f"a time must be microseconds, a datetime or a date, got {type(value).__name__}")


def _cause(exc: BaseException) -> str:
    """The driver's own message, one line, without SQLAlchemy's background link."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    return f"{type(inner).__name__}: {text}"
