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
