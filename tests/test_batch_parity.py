"""call_batch judges every odd cell exactly as call judges the same value, in every container."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import kgrid_py
from kgrid_py.errors import InputError

GOOD = {"weight": 70.0, "height": 1.75, "sex": "female", "smoker": False, "age": 40}
ODD_VALUES = [
    ("weight", "70"),
    ("weight", "nan"),
    ("weight", "1e1"),
    ("weight", True),
    ("weight", math.nan),
    ("weight", None),
    ("weight", -1.0),
    ("age", 40.5),
    ("age", "40"),
    ("sex", "F"),
    ("sex", None),
    ("smoker", None),
    ("smoker", "yes"),
]
CONTAINERS = {
    "list": lambda values: values,
    "object-ndarray": lambda values: np.array(values, dtype=object),
    "pandas": lambda values: pd.Series(values, dtype=object).to_numpy(),
}


def _single(ko: kgrid_py.KnowledgeObject, inputs: dict[str, Any]) -> set[str]:
    try:
        ko.call("bmi", inputs)
    except InputError as exc:
        return {e.field for e in exc.errors}
    return set()


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize(("field", "value"), ODD_VALUES, ids=lambda v: repr(v))
def test_batch_agrees_with_single_call(demo_path: Path, container: str, field: str, value: Any) -> None:
    ko = kgrid_py.load(str(demo_path))
    single_errors = _single(ko, {**GOOD, field: value})
    rows = [GOOD, {**GOOD, field: value}]
    columns = {name: CONTAINERS[container]([row[name] for row in rows]) for name in GOOD}
    out = ko.call_batch("bmi", columns)
    assert out.errors[0] is None
    if single_errors:
        assert out.errors[1] is not None and out.errors[1].startswith(f"{field}:"), out.errors[1]
    else:
        assert out.errors[1] is None
        assert out["bmi"][1] == ko.call("bmi", {**GOOD, field: value}).result["bmi"]


def test_arrow_text_column_is_not_read_as_numbers(demo_path: Path) -> None:
    ko = kgrid_py.load(str(demo_path))
    table = pa.table({**{k: [v] for k, v in GOOD.items()}, "weight": pa.array(["70"])})
    assert ko.call_batch("bmi", table).errors[0].startswith("weight: must be a number")


# -- booleans: one set of spellings in every path (README, "Booleans") ------------------------

BOOLEAN_CELLS = [
    (True, 1.0),
    (False, 0.0),
    (np.True_, 1.0),
    (1, 1.0),
    (0, 0.0),
    (1.0, 1.0),
    ("true", 1.0),
    ("False", 0.0),
    ("TRUE", 1.0),
    ("1", 1.0),
    ("0", 0.0),
    ("yes", None),
    ("no", None),
    ("t", None),
    (2, None),
    (0.5, None),
    ("", None),
]


def _smoker_effect(ko: kgrid_py.KnowledgeObject, out: Any, row: int) -> float:
    """The graph adds 0.5 per smoker: read the parsed boolean back from the result."""
    return (out["adjusted"][row] - ko.call("bmi", GOOD).result["adjusted"]) / 0.5


BOOLEAN_CONTAINERS = {
    "call": None,
    "list": lambda values: values,
    "object-ndarray": lambda values: np.array(values, dtype=object),
    "pandas-object": lambda values: pd.Series(values, dtype=object),
}


@pytest.mark.parametrize("container", BOOLEAN_CONTAINERS)
@pytest.mark.parametrize(("cell", "parsed"), BOOLEAN_CELLS, ids=lambda v: repr(v))
def test_booleans_parse_alike_everywhere(demo_path: Path, container: str, cell: Any, parsed: float | None) -> None:
    ko = kgrid_py.load(str(demo_path))
    if container == "call":
        if parsed is None:
            with pytest.raises(InputError, match="true or false"):
                ko.call("bmi", {**GOOD, "smoker": cell})
        else:
            expected = ko.call("bmi", {**GOOD, "smoker": bool(parsed)}).result
            assert ko.call("bmi", {**GOOD, "smoker": cell}).result == expected
        return
    make = BOOLEAN_CONTAINERS[container]
    columns: dict[str, Any] = {name: [value, value] for name, value in GOOD.items()}
    columns["smoker"] = make([False, cell])
    out = ko.call_batch("bmi", pd.DataFrame(columns) if container == "pandas-object" else columns)
    assert out.errors[0] is None
    if parsed is None:
        assert out.errors[1] is not None and out.errors[1].startswith("smoker: must be true or false")
    else:
        assert out.errors[1] is None
        assert _smoker_effect(ko, out, 1) == pytest.approx(parsed)


@pytest.mark.parametrize(
    ("cell", "parsed"), [(c, p) for c, p in BOOLEAN_CELLS if isinstance(c, str)], ids=lambda v: repr(v)
)
def test_booleans_in_an_arrow_text_column(demo_path: Path, cell: str, parsed: float | None) -> None:
    ko = kgrid_py.load(str(demo_path))
    table = pa.table({**{name: [value] for name, value in GOOD.items()}, "smoker": pa.array([cell])})
    out = ko.call_batch("bmi", table)
    if parsed is None:
        assert out.errors[0] is not None and out.errors[0].startswith("smoker: must be true or false")
    else:
        assert out.errors[0] is None
        assert _smoker_effect(ko, out, 0) == pytest.approx(parsed)


@pytest.mark.parametrize(
    "csv_column",
    ["true\nfalse\nTrue\n", "1\n0\n1\n", "TRUE\nFALSE\nTRUE\n"],
    ids=["words", "digits", "upper"],
)
def test_booleans_from_csv_as_kgrid_score_reads_it(demo_path: Path, csv_column: str) -> None:
    """pyarrow reads 0/1 as integers and true/false as booleans: both mean the same here."""
    import pyarrow.csv as pa_csv

    ko = kgrid_py.load(str(demo_path))
    lines = ["weight,height,sex,age,smoker"]
    lines += [f"70,1.75,female,40,{cell}" for cell in csv_column.split()]
    table = pa_csv.read_csv(pa.BufferReader("\n".join(lines).encode()))
    out = ko.call_batch("bmi", table)
    assert out.errors == [None, None, None]
    assert [round(_smoker_effect(ko, out, row)) for row in range(3)] == [1, 0, 1]


def test_pandas_nullable_boolean_gap_is_missing(demo_path: Path) -> None:
    """A gap (pd.NA) is a missing cell, as None is: the field's default applies."""
    ko = kgrid_py.load(str(demo_path))
    frame = pd.DataFrame({name: [value, value] for name, value in GOOD.items()})
    frame["smoker"] = pd.array([True, pd.NA], dtype="boolean")
    out = ko.call_batch("bmi", frame)
    assert out.errors[0] is None
    single = _single(ko, {k: v for k, v in GOOD.items() if k != "smoker"})
    assert (out.errors[1] is None) == (not single)
