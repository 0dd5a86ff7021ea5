"""Issue 11, "no silent nonsense": doubtful inputs and implausible results warn, naming the likely unit.

Checks run through the bundled KOs (real ONNX), one call and a batch alike; the thresholds are
the KOs' declared metadata (``suspect_units``, ``population_bounds``, ``plausible_bounds``), read
here rather than restated.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from kgrid_py.errors import InputError, InvalidKO
from kgrid_py.ko import KnowledgeObject

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
MAN = {"age": 55, "sex": "male"}


@pytest.fixture(scope="module", params=["1.0.0", "2.0.0"])
def egfr_ko(request: pytest.FixtureRequest) -> KnowledgeObject:
    return KnowledgeObject.from_path(SHELF / "ckd-epi-egfr" / request.param)


@pytest.fixture(scope="module")
def kfre() -> KnowledgeObject:
    return KnowledgeObject.from_path(SHELF / "kfre" / "1.0.0")


def _patient(ko: KnowledgeObject, **inputs: object) -> dict:
    extra = {"black": False} if ko.version == "1.0.0" else {}
    return {**MAN, **extra, **inputs}


def _fields(warnings: list[str] | tuple[str, ...]) -> list[str]:
    return [w.split(":", 1)[0] for w in warnings]


def test_creatinine_in_umol_as_mg_warns_on_input_and_output(egfr_ko: KnowledgeObject) -> None:
    """1.2 sent as umol/L (meant mg/dL): an eGFR over 300, which must not pass silently."""
    out = egfr_ko.call("egfr-cr", _patient(egfr_ko, creatinine={"value": 1.2, "unit": "umol/L"}))
    assert out.result["egfr"] > 300
    assert _fields(out.warnings) == ["creatinine", "creatinine", "egfr"]
    hint = out.warnings[1]
    assert "looks like a value in mg/dL" in hint and '{"value": 1.2, "unit": "mg/dL"}' in hint
    assert "outside the plausible range (<= 200)" in out.warnings[2]


def test_unitless_creatinine_above_20_names_umol(egfr_ko: KnowledgeObject) -> None:
    out = egfr_ko.call("egfr-cr", _patient(egfr_ko, creatinine=25))
    hint = next(w for w in out.warnings if "looks like" in w)
    assert hint.startswith("creatinine: 25 mg/dL looks like a value in umol/L (values above 20 mg/dL are unusual)")
    assert '{"value": 25, "unit": "umol/L"}' in hint


def test_unitless_creatinine_past_the_hard_bound_is_refused_naming_umol(egfr_ko: KnowledgeObject) -> None:
    with pytest.raises(InputError) as caught:
        egfr_ko.call("egfr-cr", _patient(egfr_ko, creatinine=106))
    (error,) = caught.value.errors
    assert error.field == "creatinine"
    assert error.message.startswith("106 mg/dL is impossible here: must be > 0 and <= 40; 106 mg/dL looks like")
    assert "umol/L" in error.message


def test_a_plain_normal_creatinine_has_no_warning(egfr_ko: KnowledgeObject) -> None:
    assert egfr_ko.call("egfr-cr", _patient(egfr_ko, creatinine=1.0)).warnings == []
    assert egfr_ko.call("egfr-cr", _patient(egfr_ko, creatinine={"value": 88.4, "unit": "umol/L"})).warnings == []


@pytest.mark.parametrize("micro", ["\u00b5", "\u03bc", "u"], ids=["micro-sign", "greek-mu", "ascii-u"])
def test_micro_sign_and_greek_mu_are_umol(egfr_ko: KnowledgeObject, micro: str) -> None:
    reference = egfr_ko.call("egfr-cr", _patient(egfr_ko, creatinine={"value": 97.24, "unit": "umol/L"})).result
    one = egfr_ko.call("egfr-cr", _patient(egfr_ko, creatinine={"value": 97.24, "unit": f"{micro}mol/L"}))
    assert one.result == reference
    table = {name: [value] for name, value in _patient(egfr_ko, creatinine=97.24).items()}
    batch = egfr_ko.call_batch("egfr-cr", table, units={"creatinine": f"{micro}mol/L"})
    assert batch["egfr"][0] == reference["egfr"]
    assert batch.errors == [None]


def test_batch_warns_as_call_does(egfr_ko: KnowledgeObject) -> None:
    """Per row, the batch names the same fields as a single call; unscored rows are never warned."""
    values = [1.0, 25, {"value": 1.2, "unit": "umol/L"}, 106, {"value": 25, "unit": "umol/L"}]
    table = {name: [value] * len(values) for name, value in _patient(egfr_ko, creatinine=0).items()}
    table["creatinine"] = values
    batch = egfr_ko.call_batch("egfr-cr", table)
    for row, value in enumerate(values):
        try:
            one = egfr_ko.call("egfr-cr", _patient(egfr_ko, creatinine=value))
        except InputError:
            assert batch.errors[row] is not None and "umol/L" in batch.errors[row]
            assert batch.warnings[row] == ()
            continue
        assert batch.errors[row] is None
        assert _fields(batch.warnings[row]) == _fields(one.warnings), value
        assert batch["egfr"][row] == one.result["egfr"]


def test_vectorised_batch_warns_on_implausible_output(egfr_ko: KnowledgeObject) -> None:
    """A plain float column (the vectorised path) with a column unit: output warnings per row."""
    n = 4
    table = pa.table(
        {
            "age": [55.0] * n,
            "sex": ["male"] * n,
            "creatinine": [1.2, 97.24, 1.2, 0.5],
            **({"black": [False] * n} if egfr_ko.version == "1.0.0" else {}),
        }
    )
    batch = egfr_ko.call_batch("egfr-cr", table, units={"creatinine": "umol/L"})
    assert [("egfr" in _fields(w)) for w in batch.warnings] == [True, False, True, True]
    assert all(e is None for e in batch.errors)


@pytest.mark.parametrize(
    ("field", "value", "likely"),
    [
        ("calcium", 2.4, "mmol/L"),
        ("phosphate", 0.9, "mmol/L"),
        ("albumin", 7.0, "g/L"),
        ("calcium", {"value": 6.0, "unit": "mmol/L"}, "mg/dL"),
    ],
)
def test_kfre_lab_unit_slips_name_the_likely_unit(
    kfre: KnowledgeObject, field: str, value: object, likely: str
) -> None:
    patient = {
        "age": 63,
        "sex": "female",
        "egfr": 30,
        "uacr": 300,
        "albumin": 4.0,
        "phosphate": 3.9,
        "bicarbonate": 25.0,
        "calcium": 9.4,
        "region": "north_american",
    }
    try:
        warnings = kfre.call("eight-variable", {**patient, field: value}).warnings
    except InputError as exc:
        warnings = [f"{e.field}: {e.message}" for e in exc.errors]
    hints = [w for w in warnings if "looks like" in w]
    assert len(hints) == 1 and hints[0].startswith(f"{field}: ")
    assert f"looks like a value in {likely}" in hints[0]


def test_every_laboratory_input_has_population_bounds() -> None:
    """A lab value (one with LOINC codes, not age or sex) always has intended-population bounds."""
    for metadata in sorted(SHELF.glob("*/*/metadata.json")):
        for function in json.loads(metadata.read_text())["functions"]:
            for field in function["inputs"]:
                loinc = [c for c in field.get("codes", []) if c["system"] == "http://loinc.org"]
                if field["type"] == "number" and loinc and field["name"] != "bmi":
                    assert "population_bounds" in field, f"{metadata}: {function['name']}.{field['name']}"


def _load_edited(tmp_path: Path, demo_template: Path, edit: Callable[[dict], None]) -> KnowledgeObject:
    """The demo KO with its metadata edited (metadata.json is not among the digested files)."""
    path = tmp_path / "ko"
    shutil.copytree(demo_template, path)
    raw = json.loads((path / "metadata.json").read_text())
    edit(raw)
    (path / "metadata.json").write_text(json.dumps(raw))
    return KnowledgeObject.from_path(path)


def _weight(raw: dict) -> dict:
    return next(f for f in raw["functions"][0]["inputs"] if f["name"] == "weight")


def test_a_suspect_unit_must_convert(tmp_path: Path, demo_template: Path) -> None:
    def edit(raw: dict) -> None:
        _weight(raw)["suspect_units"] = [{"above": 500, "likely": "mmol/L"}]

    with pytest.raises(InvalidKO, match="suspect unit 'mmol/L' does not convert"):
        _load_edited(tmp_path, demo_template, edit)


def test_a_suspect_unit_needs_a_threshold(tmp_path: Path, demo_template: Path) -> None:
    def edit(raw: dict) -> None:
        _weight(raw)["suspect_units"] = [{"likely": "g"}]

    with pytest.raises(InvalidKO, match="needs 'above' or 'below'"):
        _load_edited(tmp_path, demo_template, edit)


def test_a_declared_suspect_unit_warns_in_the_demo(tmp_path: Path, demo_template: Path) -> None:
    """Declarative: a new KO gets the check from its metadata alone, no code."""

    def edit(raw: dict) -> None:
        _weight(raw)["suspect_units"] = [{"above": 400, "likely": "g", "note": "Weights are in kg."}]

    ko = _load_edited(tmp_path, demo_template, edit)
    patient = {"weight": 70, "height": 1.75, "sex": "female", "age": 40}
    assert ko.call("bmi", patient).warnings == []
    with pytest.raises(InputError) as caught:  # 70000 kg: past the hard bound, and the hint says grams
        ko.call("bmi", {**patient, "weight": 70000})
    assert "looks like a value in g" in caught.value.errors[0].message


def test_output_plausible_bounds_only_on_numbers(tmp_path: Path, demo_template: Path) -> None:
    def edit(raw: dict) -> None:
        raw["functions"][0]["outputs"][0].update({"type": "enum", "enum": ["a"], "plausible_bounds": {"maximum": 1}})

    with pytest.raises(InvalidKO, match="only numbers take plausible_bounds"):
        _load_edited(tmp_path, demo_template, edit)
