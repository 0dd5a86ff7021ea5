"""Capture's record encoding: the prebuilt JSON encoder writes what json.dumps writes, numpy scalars
as numbers, and a record is what the call was, whatever the caller does with its objects afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kgrid_py
from kgrid_py.learning.capture import MAX_JSON_CHARS, Capture, encode_json
from kgrid_py.learning.store import CaptureStore

REPO = Path(__file__).resolve().parent.parent
KFRE = {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}

VALUES = [
    {"age": 63, "sex": "female", "egfr": 45.5, "uacr": {"value": 3.4, "unit": "mg/mmol"}},
    {"risk_2y": 0.0043912345678901, "risk_5y": 1e-300, "tiny": 5e-324, "big": 1.7976931348623157e308},
    {"text": 'µmol/L \u00e9\u4e2d \U0001f600 "quoted" \\ \n\t\x00', "flag": True, "none": None, "neg": -0.0},
    ["a", 1, [2, [3, {"deep": []}]], {}],
    {"int": 2**70, "sorted?": {"b": 1, "a": 2}},
]


@pytest.mark.parametrize("value", VALUES)
def test_fast_encoder_writes_what_json_dumps_writes(value: object) -> None:
    assert encode_json(value) == json.dumps(value, separators=(",", ":"))


def test_numpy_nan_cycles_and_size() -> None:
    # numpy scalars are numbers, not text; a non-finite one is null, as a plain NaN is
    scalars = {"f32": np.float32(1.5), "i64": np.int64(3), "b": np.bool_(True), "n": np.float32("nan")}
    got = json.loads(encode_json(scalars))
    assert got == {"f32": 1.5, "i64": 3, "b": True, "n": None}
    assert encode_json({"x": float("nan"), "y": [float("inf"), 1.0]}) == '{"x":null,"y":[null,1.0]}'
    assert json.loads(encode_json({"a": np.arange(3)})) == {"a": [0, 1, 2]}
    assert json.loads(encode_json({"a": np.zeros((9, 9))})) == {"a": {"shape": [9, 9], "dtype": "float64"}}
    big = encode_json({"x": "y" * (MAX_JSON_CHARS + 1)})
    assert json.loads(big)["truncated"] is True and len(big) < 200
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    with pytest.raises(RecursionError):  # the recorder turns this into an "error" record, never a crash
        encode_json(cycle)


def test_record_is_the_call_even_if_the_caller_changes_its_objects(tmp_path: Path) -> None:
    store = CaptureStore.open(tmp_path / "c.sqlite3")
    ko = kgrid_py.load("kfre@1", shelf=REPO / "knowledge_objects")
    ko.recorder = Capture(store, site="north", flush_interval_s=3600)  # nothing written until flush
    inputs = dict(KFRE)
    out = ko.call("four-variable", inputs)
    expected = dict(out.result)
    inputs["age"] = 99
    out.result["risk_5y"] = -1.0
    out.warning_details.append(out.warning_details[0] if out.warning_details else "changed")  # type: ignore[arg-type]
    ko.recorder.flush()  # type: ignore[union-attr]
    row = store.calls_table().to_pylist()[0]
    assert json.loads(row["inputs_received"]) == KFRE
    assert json.loads(row["outputs"]) == expected
    assert json.loads(row["warnings"]) == []


def test_a_call_that_cannot_be_encoded_is_kept_as_an_error(tmp_path: Path) -> None:
    store = CaptureStore.open(tmp_path / "c.sqlite3")
    ko = kgrid_py.load("kfre@1", shelf=REPO / "knowledge_objects")
    ko.recorder = Capture(store, site="north", flush_interval_s=3600)
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    with pytest.raises(kgrid_py.InputError):
        ko.call("four-variable", {**KFRE, "age": cycle})
    ko.recorder.flush()  # type: ignore[union-attr]
    row = store.calls_table().to_pylist()[0]
    assert row["status"] == "error" and "could not encode" in row["error"]
    assert row["ko_id"] == "kfre" and row["function"] == "four-variable"
