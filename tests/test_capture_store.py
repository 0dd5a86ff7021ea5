"""The capture store on SQLite and on a real PostgreSQL: schema, migrations, group writes, reads, prune."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa
from pg import capture_url, pg_url  # noqa: F401 - fixtures

from kgrid_py.learning.ids import id_time_ms, is_id, new_id
from kgrid_py.learning.migrations import MIGRATIONS, SchemaTooNew
from kgrid_py.learning.records import CallRecord
from kgrid_py.learning.store import CaptureStore, StoreError, calls, feedback, outcomes, to_us


def _record(ts_us: int, *, site: str = "north", ko: str = "kfre", status: str = "ok") -> CallRecord:
    return CallRecord(
        id=new_id(ts_us // 1000),
        ts_us=ts_us,
        site=site,
        channel="library",
        caller="library",
        ko_id=ko,
        version="1.0.0",
        content_digest="c" * 64,
        model_digest="m" * 64,
        function="four-variable",
        inputs_received=json.dumps({"age": 63}),
        inputs_used=json.dumps({"age": 63.0}),
        warnings="[]",
        status=status,
        latency_us=120,
        outputs=json.dumps({"risk_2y": 0.01}),
    )


def test_ids_sort_by_time_and_are_unique() -> None:
    # In a fresh process: ids are monotonic per process, so a capture writer of an earlier test
    # (ids at the current time) would lift these past-time ids to its own millisecond.
    code = (
        "from kgrid_py.learning.ids import new_id; print(*[new_id(1_700_000_000_000 + i // 50) for i in range(5000)])"
    )
    ids = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(is_id(i) and len(i) == 26 for i in ids)
    assert id_time_ms(ids[0]) == 1_700_000_000_000
    assert id_time_ms(ids[-1]) == 1_700_000_000_000 + 99
    with pytest.raises(ValueError, match="not a capture id"):
        id_time_ms("nope")


def test_schema_is_created_migrated_and_versioned(capture_url: str) -> None:  # noqa: F811
    store = CaptureStore.open(capture_url)
    again = CaptureStore.open(capture_url)  # a second open migrates nothing
    with store.engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
        versions = conn.exec_driver_sql("SELECT version FROM kgrid_schema_version").scalars().all()
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("calls")}
    assert {"calls", "outcomes", "feedback", "kgrid_schema_version"} <= names
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert {"ix_calls_ko_version_function_site_ts", "ix_calls_subject_key"} <= indexes
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO kgrid_schema_version VALUES ({len(MIGRATIONS) + 1}, 0)")
    with pytest.raises(StoreError, match="schema version") as refused:
        CaptureStore.open(capture_url)
    assert isinstance(refused.value.__cause__, SchemaTooNew)
    store.close()
    again.close()


def test_group_write_read_filters_and_prune(capture_url: str) -> None:  # noqa: F811
    store = CaptureStore.open(capture_url)
    day = to_us(dt.date(2025, 1, 1))
    rows = [_record(day + i * 3_600_000_000, site="north" if i % 2 else "south") for i in range(48)]
    store.write_calls(rows)
    table = store.calls_table()
    assert table.num_rows == 48 and table.column("id").to_pylist() == sorted(r.id for r in rows)
    assert table.schema.field("ts_us").type == "int64"
    north = store.calls_table(site="north", since=dt.date(2025, 1, 2))
    assert north.num_rows == 12 and set(north.column("site").to_pylist()) == {"north"}
    assert min(north.column("ts_us").to_pylist()) >= to_us(dt.date(2025, 1, 2))
    narrow = store.calls_table(ko_id="kfre", columns=["id", "outputs"])
    assert narrow.column_names == ["id", "outputs"]
    assert store.calls_table(ko_id="other").num_rows == 0
    fid = store.write_feedback(rows[0].id, "overridden", site="south", caller="ehr", override_reason="frail")
    store.write_feedback(rows[-1].id, "accepted", site="north", caller="ehr")
    assert store.feedback_table(capture_ids=[rows[0].id]).column("id").to_pylist() == [fid]
    assert store.prune(day + 24 * 3_600_000_000) == 24
    assert store.count_calls() == 24
    assert store.feedback_table().column("capture_id").to_pylist() == [rows[-1].id]  # feedback pruned with its call
    store.close()


def test_a_group_is_all_or_nothing(capture_url: str) -> None:  # noqa: F811
    store = CaptureStore.open(capture_url)
    first = _record(10)
    store.write_calls([first])
    duplicate = _record(20)
    duplicate.id = first.id
    with pytest.raises(StoreError, match="write failed"):
        store.write_calls([_record(15), duplicate])
    assert store.count_calls() == 1
    store.close()


def test_concurrent_writers_lose_nothing(capture_url: str) -> None:  # noqa: F811
    stores = [CaptureStore.open(capture_url) for _ in range(4)]

    def write(store: CaptureStore) -> None:
        for _ in range(20):
            store.write_calls([_record(1_000 + i) for i in range(25)])

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].count_calls() == 4 * 20 * 25
    for s in stores:
        s.close()


def test_outcomes_unique_per_row_digest(capture_url: str) -> None:  # noqa: F811
    store = CaptureStore.open(capture_url)
    row = {
        "id": new_id(),
        "site": "north",
        "subject_key": "k",
        "outcome": "kidney_failure",
        "event": 1,
        "event_date": "2025-03-01",
        "source": "file.csv",
        "row_digest": "d1",
        "imported_at_us": 1,
    }
    with store.engine.begin() as conn:
        conn.execute(outcomes.insert(), [row])
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(outcomes.insert(), [{**row, "id": new_id()}])
    assert {c.name for c in calls.c} >= {"subject_key", "inputs_used", "latency_us"}
    assert {c.name for c in feedback.c} >= {"capture_id", "override_reason"}
    store.close()


def test_bad_urls_and_times_are_named() -> None:
    with pytest.raises(StoreError, match="use a path"):
        CaptureStore.open("mysql://x/y")
    with pytest.raises(StoreError, match="cannot open capture store"):
        CaptureStore.open("postgresql://nobody:secret@127.0.0.1:1/none")
    try:
        CaptureStore.open("postgresql://nobody:secret@127.0.0.1:1/none")
    except StoreError as exc:
        assert "secret" not in str(exc)
    with pytest.raises(ValueError, match="no time zone"):
        to_us(dt.datetime(2025, 1, 1))
    assert to_us(dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC)) == 1_000_000
