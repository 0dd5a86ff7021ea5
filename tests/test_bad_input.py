"""Every bad KO and every bad input gets a clear, named error — never a crash."""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import kgrid_py
from kgrid_py.curation.build import seal
from kgrid_py.errors import InputError, IntegrityError, InvalidKO

PATIENT = {"weight": 70, "height": 1.75, "sex": "female", "age": 40}


def _edit_metadata(path: Path, edit) -> None:
    file = path / "metadata.json"
    raw = json.loads(file.read_text())
    edit(raw)
    file.write_text(json.dumps(raw))


# -- bad knowledge objects ---------------------------------------------------------------


def test_malformed_metadata_json(demo_path: Path) -> None:
    (demo_path / "metadata.json").write_text('{"@id": "demo-bmi/1.0.0",')
    with pytest.raises(InvalidKO, match="not valid JSON"):
        kgrid_py.load(str(demo_path))


def test_missing_metadata(demo_path: Path) -> None:
    (demo_path / "metadata.json").unlink()
    with pytest.raises(InvalidKO, match=r"no metadata\.json"):
        kgrid_py.KnowledgeObject.from_path(demo_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw.pop("dc:version"), "dc:version"),
        (lambda raw: raw.update({"dc:version": "1.0"}), "dc:version"),
        (lambda raw: raw.update({"status": "published"}), "status"),
        (lambda raw: raw["functions"][0]["inputs"][0].update({"type": "float"}), "type"),
        (lambda raw: raw.update({"surprise": 1}), "surprise"),
        (lambda raw: raw["files"][0].update({"sha256": "abc"}), "sha256"),
        (lambda raw: raw["files"][0].update({"path": "../model.onnx"}), r"\.\."),
        (lambda raw: raw.update({"tests": "../../outside.json"}), "stay inside the KO"),
    ],
    ids=[
        "no-version",
        "bad-semver",
        "bad-status",
        "bad-field-type",
        "unknown-key",
        "bad-digest",
        "path-escape",
        "tests-path-escape",
    ],
)
def test_schema_violations_are_reported(demo_path: Path, edit, message: str) -> None:
    _edit_metadata(demo_path, edit)
    with pytest.raises(InvalidKO, match=message):
        kgrid_py.load(str(demo_path))


def test_semantic_violation_caught_by_pydantic(demo_path: Path) -> None:
    _edit_metadata(demo_path, lambda raw: raw.update({"@id": "other/1.0.0"}))
    with pytest.raises(InvalidKO, match="@id must be"):
        kgrid_py.load(str(demo_path))


def test_missing_model_file(demo_path: Path) -> None:
    (demo_path / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match=r"model\.onnx: listed in metadata but missing"):
        kgrid_py.load(str(demo_path))


def test_extra_model_file(demo_path: Path) -> None:
    (demo_path / "extra.onnx").write_bytes((demo_path / "model.onnx").read_bytes())
    with pytest.raises(InvalidKO, match=r"extra\.onnx: model file not listed"):
        kgrid_py.load(str(demo_path))


def test_tampered_file_names_the_file(demo_path: Path) -> None:
    card = demo_path / "README.md"
    card.write_text(card.read_text() + "one more line\n")
    with pytest.raises(IntegrityError, match=r"README\.md: content does not match") as info:
        kgrid_py.load(str(demo_path))
    assert info.value.path == "README.md"


def test_one_changed_byte_in_the_model(demo_path: Path) -> None:
    data = bytearray((demo_path / "model.onnx").read_bytes())
    data[-1] ^= 0x01
    (demo_path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.onnx"):
        kgrid_py.load(str(demo_path))


def test_graph_input_names_must_match_declarations(demo_path: Path) -> None:
    _edit_metadata(demo_path, lambda raw: raw["functions"][0]["inputs"][0].update({"name": "mass"}))
    seal(demo_path)
    with pytest.raises(InvalidKO, match=r"do not match the graph inputs"):
        kgrid_py.load(str(demo_path))


def test_declared_output_missing_from_graph(demo_path: Path) -> None:
    _edit_metadata(demo_path, lambda raw: raw["functions"][0]["outputs"][0].update({"name": "bmi_z"}))
    seal(demo_path)
    with pytest.raises(InvalidKO, match=r"no output\(s\) \['bmi_z'\]"):
        kgrid_py.load(str(demo_path))


def test_unloadable_onnx(demo_path: Path) -> None:
    (demo_path / "model.onnx").write_bytes(b"not a model")
    seal(demo_path)
    with pytest.raises(InvalidKO, match="ONNX Runtime cannot load"):
        kgrid_py.load(str(demo_path))


def test_unsupported_graph_input_type(demo_path: Path) -> None:
    inputs = [helper.make_tensor_value_info(n, TensorProto.STRING, ["N"]) for n in ("weight",)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["weight"], ["bmi"])],
        "g",
        inputs,
        [helper.make_tensor_value_info("bmi", TensorProto.STRING, ["N"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), demo_path / "model.onnx")
    seal(demo_path)
    with pytest.raises(InvalidKO, match="unsupported type"):
        kgrid_py.load(str(demo_path))


def test_failing_vectors_refuse_to_load_when_verifying(demo_path: Path) -> None:
    vectors = json.loads((demo_path / "tests.json").read_text())
    vectors["vectors"][0]["expected"]["bmi"] += 0.001
    (demo_path / "tests.json").write_text(json.dumps(vectors))
    seal(demo_path)
    kgrid_py.load(str(demo_path))  # loads without verification
    with pytest.raises(InvalidKO, match="test vector"):
        kgrid_py.load(str(demo_path), verify_vectors=True)


# -- bad inputs --------------------------------------------------------------------------


@pytest.fixture
def ko(demo_path: Path) -> kgrid_py.KnowledgeObject:
    return kgrid_py.load(str(demo_path))


def _errors(ko: kgrid_py.KnowledgeObject, inputs: object) -> dict[str, str]:
    with pytest.raises(InputError) as info:
        ko.call("bmi", inputs)  # type: ignore[arg-type]
    return {e.field: e.message for e in info.value.errors}


def test_missing_required_input(ko) -> None:
    errors = _errors(ko, {k: v for k, v in PATIENT.items() if k != "height"})
    assert errors == {"height": "is required"}


def test_unknown_input_is_refused_not_dropped(ko) -> None:
    errors = _errors(ko, {**PATIENT, "heigth": 1.8})
    assert "heigth" in errors and "not an input" in errors["heigth"]


def test_removed_input_says_why(ko) -> None:
    errors = _errors(ko, {**PATIENT, "race": "white"})
    assert "made-up reason" in errors["race"]


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("weight", "70", "must be a number"),
        ("weight", True, "must be a number"),
        ("weight", [70], "must be a number"),
        ("age", 40.5, "whole number"),
        ("sex", "F", "must be one of female, male"),
        ("sex", 1, "must be one of"),
        ("smoker", "yes", "true or false"),
        ("smoker", 2, "true or false"),
        ("smoker", 0.5, "true or false"),
        ("weight", {"value": 70, "unit": "mmol/L"}, "cannot be converted"),
        ("weight", {"value": 70, "unit": "furlong"}, "cannot be converted"),
        ("weight", {"value": 70, "unit": 5}, "unit must be a string"),
        ("weight", {"amount": 70}, "quantity is"),
        ("weight", {"value": 70, "unit": "kg", "note": "x"}, "quantity is"),
    ],
)
def test_wrong_types_and_units(ko, field: str, value: object, needle: str) -> None:
    errors = _errors(ko, {**PATIENT, field: value})
    assert needle in errors[field]


def test_huge_integer_is_an_input_error(ko) -> None:
    assert "too large" in _errors(ko, {**PATIENT, "weight": 10**400})["weight"]


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_infinity(ko, value: float) -> None:
    assert "finite" in _errors(ko, {**PATIENT, "weight": value})["weight"]


def test_nan_is_missing_and_takes_a_default_like_a_table_cell(ko) -> None:
    assert _errors(ko, {**PATIENT, "weight": math.nan}) == {"weight": "is missing"}
    assert ko.call("bmi", {**PATIENT, "smoker": None}).result == ko.call("bmi", PATIENT).result


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("weight", 0, "> 0"),
        ("weight", -3, "> 0"),
        ("weight", 501, "<= 500"),
        ("height", 0.1, ">= 0.3"),
        ("age", 17, ">= 18"),
        ("age", 121, "<= 120"),
    ],
)
def test_hard_bounds(ko, field: str, value: float, needle: str) -> None:
    message = _errors(ko, {**PATIENT, field: value})[field]
    assert "impossible" in message and needle in message


def test_hard_bounds_apply_after_unit_conversion(ko) -> None:
    # 600 lb is 272 kg: allowed; 1200 lb is 544 kg: over the 500 kg bound.
    assert ko.call("bmi", {**PATIENT, "weight": {"value": 600, "unit": "[lb_av]"}}).result["bmi"] > 0
    assert "<= 500" in _errors(ko, {**PATIENT, "weight": {"value": 1200, "unit": "[lb_av]"}})["weight"]


def test_cross_field_constraint(ko) -> None:
    assert _errors(ko, {**PATIENT, "smoker": True, "age": 19}) == {"age": "smokers in this demo must be 21 or older"}


def test_every_bad_field_reported_at_once(ko) -> None:
    errors = _errors(ko, {"weight": -1, "sex": "x", "extra": 1})
    assert set(errors) == {"weight", "sex", "extra", "height", "age"}


@pytest.mark.parametrize("inputs", [[PATIENT], "weight=70", None, 42])
def test_inputs_must_be_an_object(ko, inputs: object) -> None:
    assert "(body)" in _errors(ko, inputs)


def test_unknown_function(ko) -> None:
    with pytest.raises(kgrid_py.NotFound, match="available: bmi"):
        ko.call("bmj", PATIENT)


def test_batch_refuses_removed_and_lookalike_columns_and_ragged_tables(ko) -> None:
    # Other columns are ignored, as kgrid score ignores them (kgrid_py.columns), but not these.
    with pytest.raises(InputError, match="race"):
        ko.call_batch("bmi", {"weight": [70], "height": [1.7], "sex": ["male"], "age": [40], "race": ["x"]})
    with pytest.raises(InputError, match="'Smoker' looks like input 'smoker'"):
        ko.call_batch("bmi", {"weight": [70], "height": [1.7], "sex": ["male"], "age": [40], "Smoker": [True]})
    with pytest.raises(InputError, match="differ in length"):
        ko.call_batch("bmi", {"weight": [70, 80], "height": [1.7], "sex": ["male"], "age": [40]})
    with pytest.raises(InputError, match="height: is required"):
        ko.call_batch("bmi", {"weight": [70], "sex": ["male"], "age": [40]})
