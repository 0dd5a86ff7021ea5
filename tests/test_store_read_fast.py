"""The capture store's fast read path (Arrow's JSON parser on SQLite) equals SQL extraction, row for row.

`calls_numbers` parses the stored JSON texts with Arrow on SQLite and falls back to `json_extract`
where a text is not one JSON object of the expected types; PostgreSQL always extracts in SQL. These
tests write the same calls to each store and compare the tables the two paths give, including rows
that force the fallback (a text member where a number is expected, a line break inside a text).
"""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pg import capture_url, pg_url  # noqa: F401 - fixtures

import kgrid_py
from kgrid_py.learning import monitor as mon
from kgrid_py.learning.cohort import Site, call_records, kfre_cohort
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer

SITES = (Site("north", 150), Site("south", 120, risk_ratio=2.0))


@pytest.fixture(scope="module")
def records():
    """Calls of two sites with refusals; a few with values JSON round-trips only if parsed exactly."""
    rows = call_records(kfre_cohort(seed=7, sites=SITES), SubjectKeyer("k" * 48), refused_every=9)
    for i, value in ((3, 0.1 + 0.2), (4, 5e-324), (5, 1.0000000000000002)):
        outputs = json.loads(rows[i].outputs)
        outputs["risk_2y"] = value
        rows[i] = dataclasses.replace(rows[i], outputs=json.dumps(outputs))
    return rows


@pytest.fixture(scope="module")
def function():
    return kgrid_py.load("kfre@1").metadata.function("four-variable")


def _read(store: CaptureStore, function, **kw) -> pa.Table:
    return mon.calls_numbers(store, "kfre", "1.0.0", function, **kw)


def _sql(store: CaptureStore, function, site=None, ok_only=False) -> pa.Table:
    spec = function.outcome
    inputs = [s for s in spec.development if s.name != "linear_predictor"]
    # a failed call's members are null in both paths (neither reads them)
    return mon._sql_extracted_calls(
        store, "kfre", "1.0.0", function.name, site, None, ok_only, mon.outcome_outputs(spec), inputs
    )


def test_arrow_path_equals_sql_extraction_and_both_backends_agree(records, function, capture_url, tmp_path):  # noqa: F811
    with CaptureStore.open(capture_url) as store:
        store.write_calls(records)
        table = _read(store, function)
        assert table.num_rows == len(records)
        assert table.equals(_sql(store, function))  # PostgreSQL: the same reader; SQLite: the two paths
        ok = _read(store, function, site="south", ok_only=True, with_inputs=False)
    assert set(ok.column("status").to_pylist()) == {0}
    assert set(ok.column("site").to_pylist()) == {"south"}
    assert not any(n.startswith("in:") for n in ok.column_names)
    # exact floats, whichever path or backend read them
    assert {0.1 + 0.2, 5e-324, 1.0000000000000002} <= set(table.column("out:risk_2y").to_pylist())
    # the same calls in SQLite read to the same table as on this backend
    with CaptureStore.open(tmp_path / "other.sqlite3") as other:
        other.write_calls(records)
        assert _read(other, function).equals(table)


@pytest.mark.parametrize(
    "field, text",
    [
        ("outputs", '{"risk_2y": "high", "risk_5y": 0.2}'),  # a member of another JSON type
        ("inputs_used", '{"age": 70, "sex": 1, "egfr": 30, "uacr": 10}'),  # a number where a level is expected
        ("outputs", '{"risk_2y": 0.1,\n "risk_5y": 0.2}'),  # a line break between tokens
        ("outputs", "null"),  # not an object
    ],
)
def test_texts_arrow_cannot_read_fall_back_to_sql_rules(records, function, field, text, tmp_path):
    rows = list(records)
    rows[0] = dataclasses.replace(rows[0], status="ok", **{field: text})
    with CaptureStore.open(tmp_path / "odd.sqlite3") as store:
        store.write_calls(rows)
        table = _read(store, function)
        assert table.equals(_sql(store, function))
    mine = pc.and_(
        pc.equal(table.column("subject_key"), rows[0].subject_key), pc.equal(table.column("ts_us"), rows[0].ts_us)
    )
    (first,) = table.filter(mine).to_pylist()
    if text.startswith('{"risk_2y": "high"'):
        assert first["out:risk_2y"] is None and first["out:risk_5y"] == 0.2
    if field == "inputs_used":
        assert first["in:sex"] == "1"


def test_json_objects_refuses_what_it_cannot_align():
    schema = pa.schema([("x", pa.float64())])
    assert mon.json_objects(['{"x": 1}', '{"x": 2.5}'], schema).column("x").to_pylist() == [1.0, 2.5]
    assert mon.json_objects(['{"x": 1}\n{"x": 2}', ""], schema) is None  # two objects in one text, one empty
    assert mon.json_objects(['{"x": 1}', " "], schema) is None  # a blank text: lines would not match rows
    assert mon.json_objects(['{"x": 1}\r', '{"x": 2}'], schema) is None
    assert mon.json_objects(['{"x": "a"}'], schema) is None
    assert mon.json_objects([], schema).num_rows == 0
