"""A function's ``result_warnings``: attached to every result, single call and batch alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kgrid_py
from kgrid_py.curation.build import seal
from kgrid_py.errors import InputError

PATIENT = {"weight": 70, "height": 1.75, "sex": "female", "age": 40}
NOTICE = "trained on synthetic data only; not for clinical use"


@pytest.fixture
def warned_path(demo_path: Path) -> Path:
    """The demo KO with one always-on warning on its function, re-sealed."""
    file = demo_path / "metadata.json"
    raw = json.loads(file.read_text())
    raw["functions"][0]["result_warnings"] = [NOTICE]
    file.write_text(json.dumps(raw))
    seal(demo_path)
    return demo_path


def test_every_single_call_result_carries_the_warning(warned_path: Path) -> None:
    ko = kgrid_py.load(str(warned_path))
    assert ko.function("bmi").result_warnings == [NOTICE]
    first = ko.call("bmi", PATIENT)
    assert first.warnings == [f"(model): {NOTICE}"]
    assert [w.field for w in first.warning_details] == ["(model)"]
    # Input warnings come first; the model's warning is added, not shared or accumulated.
    old = ko.call("bmi", {**PATIENT, "age": 95})
    assert [w.field for w in old.warning_details] == ["age", "(model)"]
    assert ko.call("bmi", PATIENT).warnings == first.warnings
    assert first.as_dict()["warnings"] == [f"(model): {NOTICE}"]


def test_a_refused_call_has_no_result_and_no_warning(warned_path: Path) -> None:
    ko = kgrid_py.load(str(warned_path))
    with pytest.raises(InputError):
        ko.call("bmi", {**PATIENT, "weight": 0})


def test_every_valid_batch_row_carries_the_warning(warned_path: Path) -> None:
    ko = kgrid_py.load(str(warned_path))
    table = {
        "weight": np.array([70.0, 0.0, 80.0]),
        "height": np.array([1.75, 1.75, 1.80]),
        "sex": np.array(["female", "male", "male"], dtype=object),
        "age": np.array([40, 40, 95]),
    }
    out = ko.call_batch("bmi", table)
    model_warning = f"(model): {NOTICE}"
    assert out.warnings[0] == (model_warning,)
    assert out.errors[1] is not None and out.warnings[1] == ()
    assert out.warnings[2][-1] == model_warning and out.warnings[2][0].startswith("age:")


def test_functions_without_result_warnings_are_unchanged(demo_path: Path) -> None:
    ko = kgrid_py.load(str(demo_path))
    assert ko.function("bmi").result_warnings == []
    assert ko.call("bmi", PATIENT).warnings == []
    assert ko.call_batch("bmi", {k: [v] for k, v in PATIENT.items()}).warnings == [()]


def test_empty_expect_warnings_ignores_model_warnings(tmp_path: Path) -> None:
    """A vector's ``expect_warnings: []`` means no *input* warnings; model warnings always come."""
    from kgrid_py.vectors import TestVector, TestVectors, run_vectors

    ko = kgrid_py.load("brain-sex-dann", shelf=Path(__file__).resolve().parent.parent / "knowledge_objects")
    probe = next(v for v in json.loads((ko.path / "tests.json").read_text())["vectors"] if "expected" in v)
    clean = TestVector.model_validate({**probe, "expect_warnings": []})
    outcome = run_vectors(ko, TestVectors(vectors=[clean]))[0]
    assert outcome.passed, outcome.detail
