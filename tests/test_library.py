"""Calling a KO from Python: one patient, a table, units, warnings and provenance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import kgrid_py
from kgrid_py.digest import sha256_file

PATIENT = {"weight": 70, "height": 1.75, "sex": "female", "age": 40}


def test_load_by_reference_and_by_path(demo_shelf: Path, demo_path: Path) -> None:
    by_ref = kgrid_py.load("demo-bmi@1", shelf=demo_shelf)
    by_path = kgrid_py.load(str(demo_path))
    assert by_ref.ref == by_path.ref == "demo-bmi@1.0.0"
    assert by_ref.content_digest == by_path.content_digest


def test_call_returns_result_warnings_provenance(demo_shelf: Path, demo_path: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    out = ko.call("bmi", PATIENT)
    assert out.result["bmi"] == pytest.approx(70 / 1.75**2, rel=1e-15)
    assert out.result["category"] == "normal"
    assert out.result["obese"] is False
    assert out.warnings == []
    assert out.provenance.ko_id == "demo-bmi"
    assert out.provenance.version == "1.0.0"
    assert out.provenance.model_digest == sha256_file(demo_path / "model.onnx")
    assert len(out.provenance.content_digest) == 64


def test_default_is_used_for_optional_input(demo_shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    assert ko.call("bmi", PATIENT).result["adjusted"] == ko.call("bmi", {**PATIENT, "smoker": False}).result["adjusted"]
    smoker = ko.call("bmi", {**PATIENT, "smoker": True}).result["adjusted"]
    assert smoker == pytest.approx(70 / 1.75**2 + 0.5)


def test_population_warning_is_clear(demo_shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    out = ko.call("bmi", {**PATIENT, "age": 95})
    assert len(out.warnings) == 1
    assert out.warnings[0].startswith("age: 95 a is outside the intended population")
    assert "Not studied over 90" in out.warnings[0]
    assert out.warning_details[0].field == "age"


@pytest.mark.parametrize(
    ("height", "expected_m"),
    [
        ({"value": 175, "unit": "cm"}, 1.75),
        ({"value": 1750, "unit": "mm"}, 1.75),
        ({"value": 1.75, "unit": "m"}, 1.75),
    ],
)
def test_dimensional_units_convert(demo_shelf: Path, height: dict, expected_m: float) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    assert ko.call("bmi", {**PATIENT, "height": height}).result["bmi"] == pytest.approx(70 / expected_m**2, rel=1e-12)


def test_declared_analyte_unit_converts(demo_shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    out = ko.call("bmi", {**PATIENT, "weight": {"value": 154.0, "unit": "[lb_av]"}})
    assert out.result["bmi"] == pytest.approx(154.0 * 0.45359237 / 1.75**2, rel=1e-12)


def test_grams_convert_to_kilograms(demo_shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    out = ko.call("bmi", {**PATIENT, "weight": {"value": 70000, "unit": "g"}})
    assert out.result["bmi"] == pytest.approx(70 / 1.75**2, rel=1e-12)


def test_batch_matches_single_calls_row_for_row(demo_shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    rng = np.random.default_rng(7)
    n = 500
    table = {
        "weight": rng.uniform(40, 150, n),
        "height": rng.uniform(1.4, 2.0, n),
        "sex": rng.choice(["female", "male"], n).tolist(),
        "smoker": rng.random(n) < 0.3,
        "age": rng.integers(21, 90, n),
    }
    out = ko.call_batch("bmi", table)
    assert out.n_rows == n and out.errors == [None] * n
    for i in range(0, n, 37):
        single = ko.call("bmi", {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in table.items()})
        assert out["bmi"][i] == single.result["bmi"]
        assert out["category"][i] == single.result["category"]
        assert out["obese"][i] == single.result["obese"]


def test_batch_bad_rows_do_not_fail_others(demo_shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    table = {
        "weight": [70, 0, 80, float("nan"), 60, 65],
        "height": [1.75, 1.7, 1.8, 1.7, 1.6, 1.7],
        "sex": ["female", "male", "other", "male", "male", "female"],
        "smoker": [False, False, False, False, True, False],
        "age": [30, 40, 50, 60, 19, 95],
    }
    out = ko.call_batch("bmi", table)
    assert out.errors[0] is None and out.errors[5] is None
    assert "weight" in out.errors[1] and "impossible" in out.errors[1]
    assert "sex" in out.errors[2]
    assert "weight" in out.errors[3]
    assert "21 or older" in out.errors[4]  # the cross-field constraint
    assert math.isnan(out["bmi"][1]) and out["category"][2] is None
    assert out["bmi"][5] == pytest.approx(65 / 1.7**2)
    assert out.warnings[5] and out.warnings[5][0].startswith("age:")
    assert out.warnings[0] == ()


def test_batch_accepts_arrow_and_pandas(demo_shelf: Path) -> None:
    pd = pytest.importorskip("pandas", reason="pandas is a test dependency")
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    data = {"weight": [70.0, 90.0], "height": [1.75, 1.8], "sex": ["female", "male"], "age": [40, 50]}
    from_dict = ko.call_batch("bmi", data)
    from_arrow = ko.call_batch("bmi", pa.table(data))
    from_pandas = ko.call_batch("bmi", pd.DataFrame(data))
    np.testing.assert_array_equal(from_dict["bmi"], from_arrow["bmi"])
    np.testing.assert_array_equal(from_dict["bmi"], from_pandas["bmi"])
    frame = from_pandas.to_pandas()
    assert list(frame.columns) == ["bmi", "adjusted", "category", "obese", "error", "warnings"]


def test_batch_column_units(demo_shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    data = {"weight": [70.0, 90.0], "height": [175.0, 180.0], "sex": ["female", "male"], "age": [40, 50]}
    out = ko.call_batch("bmi", data, units={"height": "cm"})
    assert out["bmi"][0] == pytest.approx(70 / 1.75**2)
    with pytest.raises(kgrid_py.InputError, match="height"):
        ko.call_batch("bmi", data, units={"height": "mmol/L"})


def test_batch_of_only_bad_rows(demo_shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    out = ko.call_batch("bmi", {"weight": [-1.0], "height": [1.7], "sex": ["male"], "age": [40]})
    assert out.errors[0] is not None and math.isnan(out["bmi"][0])


def test_own_vectors_pass(demo_shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf, verify_vectors=True)
    outcomes = ko.test()
    assert outcomes and all(o.passed for o in outcomes), [o.detail for o in outcomes if not o.passed]


def test_sessions_are_shared(demo_shelf: Path) -> None:
    first = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    second = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    assert first._function("bmi").session is second._function("bmi").session


def test_runtime_does_not_import_torch(demo_path: Path) -> None:
    import subprocess
    import sys

    code = (
        f"import sys, kgrid_py; kgrid_py.load({str(demo_path)!r}).call('bmi', {PATIENT!r}); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_public_api_is_sorted_and_complete() -> None:
    assert kgrid_py.__all__ == sorted(kgrid_py.__all__)
    for name in kgrid_py.__all__:
        assert hasattr(kgrid_py, name), name


def test_arrow_table_with_bad_and_missing_labels(demo_shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi", shelf=demo_shelf)
    table = pa.table(
        {
            "weight": [70.0, 80.0, 90.0],
            "height": [1.75, 1.8, 1.7],
            "sex": pa.array(["female", "unknown", None]).dictionary_encode(),
            "smoker": pa.array([True, None, False]),
            "age": [40, 50, 60],
        }
    )
    out = ko.call_batch("bmi", table)
    assert out.errors[0] is None
    assert "sex: must be one of female, male" in out.errors[1]
    assert out.errors[2] == "sex: is missing"
    assert out["adjusted"][0] == pytest.approx(70 / 1.75**2 + 0.5)
