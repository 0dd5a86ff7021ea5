"""A one-row ``call_batch`` takes call()'s cheaper plan where it can, and must answer exactly as the batch path.

Every random row below is scored twice, with the one-row path allowed and with it switched off,
and the two answers are compared field by field: outputs (bit for bit), error, warnings, and the
inputs as used that a recorder would store.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

import kgrid_py
import kgrid_py.ko as ko_module
from kgrid_py.metadata import FieldSpec

FUNCTIONS = [
    ("kfre@1", "four-variable"),
    ("kfre@1", "eight-variable"),
    ("ckd-epi-egfr@1", "egfr-cr-cys"),
    ("ckd-epi-egfr@2", "egfr-cr"),
    ("plcom2012@1", "risk"),
]
ROWS = 150


def _value(rng: random.Random, field: FieldSpec, clean: bool) -> Any:
    odd = [None, math.nan, "", True, False, 0, -1, 1e308, "63", [1], {"value": 1}]
    if not clean and rng.random() < 0.15:
        return rng.choice(odd)
    if field.type == "enum":
        levels = list(field.enum or [])
        return rng.choice(levels if clean else [*levels, *levels, "Female", "unknown", 1])
    if field.type == "boolean":
        return rng.choice([True, False] if clean else [True, False, "true", "0", 1, 0.5])
    low, high = 0.0, 150.0
    if field.hard_bounds is not None:
        low = field.hard_bounds.minimum if field.hard_bounds.minimum is not None else low
        high = field.hard_bounds.maximum if field.hard_bounds.maximum is not None else high
    if field.population_bounds is not None and (clean or rng.random() < 0.6):
        low = field.population_bounds.minimum if field.population_bounds.minimum is not None else low
        high = field.population_bounds.maximum if field.population_bounds.maximum is not None else high
    value = rng.uniform(low, high)
    return int(value) if field.type == "integer" or rng.random() < 0.3 else value


def _rows(ko: kgrid_py.KnowledgeObject, function: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    spec = ko.metadata.function(function)
    rows = []
    for _ in range(ROWS):
        clean = rng.random() < 0.4  # a row call() takes without a warning: the one-row path's case
        row = {f.name: _value(rng, f, clean) for f in spec.inputs if f.required or rng.random() < 0.7}
        rows.append(row)
    return rows


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True)) and a.dtype == b.dtype and a.shape == b.shape
    return a.dtype == b.dtype and a.shape == b.shape and list(a) == list(b)


@pytest.mark.parametrize(("ref", "function"), FUNCTIONS)
@pytest.mark.parametrize("container", ["list", "ndarray"])
def test_a_one_row_batch_answers_exactly_as_the_batch_path(
    ref: str, function: str, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ko = kgrid_py.load(ref)
    taken = 0
    allowed = True
    original = ko_module._one_row

    def switchable(fn: Any, fed: dict[str, Any]) -> Any:
        nonlocal taken
        answer = original(fn, fed) if allowed else None
        taken += answer is not None
        return answer

    def batch(columns: dict[str, Any], one_row_path: bool) -> Any:
        nonlocal allowed
        allowed = one_row_path
        try:
            return ko.call_batch(function, columns)
        finally:
            allowed = True

    monkeypatch.setattr(ko_module, "_one_row", switchable)
    for index, row in enumerate(_rows(ko, function, seed=sum(map(ord, ref + function)))):
        if container == "list":
            columns = {name: [value] for name, value in row.items()}
        else:
            columns = {name: np.array([value], dtype=object) for name, value in row.items()}
        try:
            one = batch(columns, one_row_path=True)
        except kgrid_py.InputError as exc:
            with pytest.raises(kgrid_py.InputError) as again:
                batch(columns, one_row_path=False)
            assert str(again.value) == str(exc), (index, row)
            continue
        reference = batch(columns, one_row_path=False)
        assert one.errors == reference.errors, (index, row)
        assert one.warnings == reference.warnings, (index, row)
        assert one.columns.keys() == reference.columns.keys()
        for name in one.columns:
            assert _same(one.columns[name], reference.columns[name]), (index, row, name)
    assert taken >= 5, "the one-row path was hardly ever taken: this test would not see it break"


def test_the_one_row_path_is_what_a_recorder_sees_too(monkeypatch: pytest.MonkeyPatch) -> None:
    records: list[Any] = []
    ko = kgrid_py.load("kfre@1")
    ko.recorder = records.append
    columns = {"age": [63.0], "sex": ["female"], "egfr": [45.0], "uacr": [30.0]}
    ko.call_batch("four-variable", columns)
    monkeypatch.setattr(ko_module, "_one_row", lambda fn, fed: None)
    ko.call_batch("four-variable", columns)
    fast, reference = records
    assert fast.status == reference.status == "ok"
    assert list(fast.valid) == list(reference.valid) == [True]
    assert fast.used.keys() == reference.used.keys()
    for name in fast.used:
        assert list(np.asarray(fast.used[name])) == list(np.asarray(reference.used[name])), name


@pytest.mark.parametrize("threshold", [2.0, math.inf, -0.5])
def test_a_bad_value_in_a_column_with_a_default_is_a_row_error_not_a_crash(threshold: float) -> None:
    # Once a RecursionError: filling the default into missing cells never cleared an out-of-range one.
    ko = kgrid_py.load("plcom2012@1")
    row = {
        "age": 62.0,
        "race": "white",
        "education": 3,
        "bmi": 27.0,
        "copd": False,
        "personal_cancer_history": False,
        "family_lung_cancer_history": False,
        "smoking_status": "former",
        "cigarettes_per_day": 20.0,
        "smoking_years": 30.0,
        "years_since_quit": 5.0,
    }
    columns = {name: np.array([value] * 3, dtype=object) for name, value in row.items()}
    columns["threshold"] = np.array([threshold, math.nan, 0.02])
    result = ko.call_batch("risk", columns)
    assert result.errors[0] is not None and "threshold" in result.errors[0]
    assert result.errors[1:] == [None, None]
    assert result["screening_recommended"][1] == (result["risk_6y"][1] >= 0.0151)
