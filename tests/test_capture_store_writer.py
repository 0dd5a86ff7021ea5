"""``CaptureStore.write_rows`` keeps one driver connection of its own: it must survive losing it.

A PostgreSQL that restarts or fails over drops every session; the writer's kept connection is then
dead, and the next group must still be committed (on a fresh connection), once, with nothing lost
or counted twice. On SQLite a failed group (a unique-key clash) commits none of its rows.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from pg import capture_url, pg_url  # noqa: F401 - fixtures
from test_capture_store import _record

from kgrid_py.learning.records import COLUMNS
from kgrid_py.learning.store import CaptureStore, StoreError, store_url


def _rows(start_us: int, n: int) -> list[tuple[object, ...]]:
    return [tuple(getattr(_record(start_us + i * 1000), c) for c in COLUMNS) for i in range(n)]


def _count(store: CaptureStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM calls").scalar_one())


@pytest.fixture
def pg_store_url(pg_url: str) -> str:  # noqa: F811 - the fixture imported above
    """A fresh database on the session's PostgreSQL."""
    name = "w" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(store_url(pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return pg_url.rsplit("/", 1)[0] + "/" + name


def test_a_group_after_the_server_dropped_the_writers_session_is_committed_once(pg_store_url: str) -> None:
    with CaptureStore.open(pg_store_url) as store:
        store.write_rows(_rows(1_700_000_000_000_000, 5))
        database = sa.engine.make_url(store_url(pg_store_url)).database
        admin = sa.create_engine(store_url(pg_store_url), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # what a restart does to every open session
            ended = conn.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).scalar_one()
        admin.dispose()
        assert ended >= 1
        store.write_rows(_rows(1_700_000_100_000_000, 7))
        assert _count(store) == 12


def test_a_group_that_cannot_be_committed_leaves_no_row_and_the_next_one_commits(capture_url: str) -> None:  # noqa: F811
    with CaptureStore.open(capture_url) as store:
        first = _rows(1_700_000_000_000_000, 3)
        store.write_rows(first)
        clash = _rows(1_700_000_200_000_000, 4) + first[:1]  # a repeated id: the whole group fails
        with pytest.raises(StoreError, match="write failed"):
            store.write_rows(clash)
        assert _count(store) == 3
        store.write_rows(_rows(1_700_000_300_000_000, 2))
        assert _count(store) == 5


@pytest.mark.parametrize(("query", "level"), [("", 1), ("?synchronous=normal", 1), ("?synchronous=full", 2)])
def test_sqlite_durability_is_normal_unless_the_url_asks_for_full(tmp_path: Path, query: str, level: int) -> None:
    # 1 = NORMAL (a commit survives kill -9), 2 = FULL (and a power loss: an fsync per commit).
    with CaptureStore.open(f"sqlite:///{tmp_path / 'c.sqlite3'}{query}") as store:
        store.write_rows(_rows(1_700_000_000_000_000, 2))
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == level
        assert store._rows_conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert _count(store) == 2


@pytest.mark.parametrize("query", ["synchronous=off", "synchronous=FULL", "synchronous=normal&synchronous=full"])
def test_an_unknown_or_ambiguous_durability_is_refused(tmp_path: Path, query: str) -> None:
    with pytest.raises(StoreError, match="synchronous="):
        CaptureStore.open(f"sqlite:///{tmp_path / 'c.sqlite3'}?{query}")
    assert not (tmp_path / "c.sqlite3").exists()
