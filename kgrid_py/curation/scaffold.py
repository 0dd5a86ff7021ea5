"""``kgrid init NAME``: a new KO folder that passes ``kgrid validate`` as created.

The template is a small logistic risk score (age, a biomarker in mg/dL, smoking) so that every
part of a real KO is there to edit: metadata with units, bounds and a population warning, a
torch module (``src/model.py``) and its build (``src/build.py``, the ``build(ko_dir) -> dict``
contract of ``kgrid build``), a plain-math reference the test vectors come from
(``src/reference.py``), test vectors, and a model-card template. The first ``model.onnx`` is
written with ``onnx.helper`` from the same coefficients, so init needs no torch; ``kgrid build``
later regenerates it from the torch module.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from kgrid_py.curation.build import seal
from kgrid_py.curation.errors import CurationError
from kgrid_py.metadata import KO_ID_PATTERN, KOIO_CONTEXT, SEMVER_PATTERN
from kgrid_py.shelf import reserved_id_problem

__all__ = ["COEFFICIENTS", "init_ko", "reference_risk"]

COEFFICIENTS = {"intercept": -2.0, "age": 0.05, "biomarker": 0.01, "smoker": 0.7}
CENTRES = {"age": 60.0, "biomarker": 100.0}
OPSET = 17
INPUTS = ("age", "biomarker", "smoker")


def reference_risk(age: float, biomarker: float, smoker: bool) -> float:
    """The template's score in plain math (what the test vectors expect)."""
    c = COEFFICIENTS
    lp = (
        c["intercept"]
        + c["age"] * (age - CENTRES["age"])
        + c["biomarker"] * (biomarker - CENTRES["biomarker"])
        + c["smoker"] * float(smoker)
    )
    return 1.0 / (1.0 + math.exp(-lp))


def init_ko(
    name: str, parent: Path, *, version: str = "1.0.0", author: str = "TODO: your name", license: str = "Apache-2.0"
) -> Path:
    """Create ``parent/NAME`` holding a sealed, valid template KO and return its path."""
    if not re.match(KO_ID_PATTERN, name):
        raise CurationError(f"{name!r} is not a valid KO id: lowercase letters, digits and '-', starting with a letter")
    reserved = reserved_id_problem(name)
    if reserved:
        raise CurationError(reserved)
    if not re.match(SEMVER_PATTERN, version):
        raise CurationError(f"{version!r} is not a semantic version (X.Y.Z)")
    path = Path(parent) / name
    if path.exists():
        raise CurationError(f"{path} already exists")
    (path / "src").mkdir(parents=True)
    onnx.save(_graph(), path / "model.onnx")
    (path / "tests.json").write_text(json.dumps({"vectors": _vectors()}, indent=2) + "\n", encoding="utf-8")
    (path / "README.md").write_text(_MODEL_CARD.format(name=name, version=version), encoding="utf-8")
    (path / "src" / "model.py").write_text(_MODEL_PY.format(**_constants()), encoding="utf-8")
    (path / "src" / "reference.py").write_text(_REFERENCE_PY.format(**_constants()), encoding="utf-8")
    (path / "src" / "build.py").write_text(_BUILD_PY.format(opset=OPSET), encoding="utf-8")
    metadata = _metadata(name, version, author, license)
    (path / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    seal(path)
    return path


def _constants() -> dict[str, Any]:
    return {"coefficients": repr(COEFFICIENTS), "centres": repr(CENTRES)}


def _graph() -> onnx.ModelProto:
    double = TensorProto.DOUBLE
    c = COEFFICIENTS
    consts = {
        "intercept": c["intercept"],
        "b_age": c["age"],
        "b_biomarker": c["biomarker"],
        "b_smoker": c["smoker"],
        "c_age": CENTRES["age"],
        "c_biomarker": CENTRES["biomarker"],
    }
    nodes = [
        helper.make_node("Sub", ["age", "c_age"], ["age_c"]),
        helper.make_node("Mul", ["age_c", "b_age"], ["t_age"]),
        helper.make_node("Sub", ["biomarker", "c_biomarker"], ["bio_c"]),
        helper.make_node("Mul", ["bio_c", "b_biomarker"], ["t_bio"]),
        helper.make_node("Mul", ["smoker", "b_smoker"], ["t_smoker"]),
        helper.make_node("Add", ["t_age", "t_bio"], ["s1"]),
        helper.make_node("Add", ["s1", "t_smoker"], ["s2"]),
        helper.make_node("Add", ["s2", "intercept"], ["linear_predictor"]),
        helper.make_node("Sigmoid", ["linear_predictor"], ["risk"]),
    ]
    graph = helper.make_graph(
        nodes,
        "template_risk",
        [helper.make_tensor_value_info(n, double, ["N"]) for n in INPUTS],
        [
            helper.make_tensor_value_info("risk", double, ["N"]),
            helper.make_tensor_value_info("linear_predictor", double, ["N"]),
        ],
        initializer=[helper.make_tensor(k, double, [], [v]) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kgrid init")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _vectors() -> list[dict[str, Any]]:
    cases = [(45, 80.0, False), (60, 100.0, True), (75, 160.0, False)]
    vectors: list[dict[str, Any]] = []
    for age, biomarker, smoker in cases:
        risk = reference_risk(age, biomarker, smoker)
        vectors.append(
            {
                "name": f"age {age}, biomarker {biomarker} mg/dL, smoker={smoker}",
                "function": "risk",
                "input": {"age": age, "biomarker": biomarker, "smoker": smoker},
                "expected": {"risk": risk, "linear_predictor": math.log(risk / (1 - risk))},
                "rel_tol": 1e-9,
                "expect_warnings": [],
                "source": "src/reference.py",
            }
        )
    vectors.append(
        {
            "name": "a biomarker in g/L is converted",
            "function": "risk",
            "input": {"age": 60, "biomarker": {"value": 1.0, "unit": "g/L"}},
            "expected": {"risk": reference_risk(60, 100.0, False)},
            "rel_tol": 1e-9,
            "source": "src/reference.py; 1 g/L = 100 mg/dL",
        }
    )
    vectors.append(
        {
            "name": "age outside the intended population warns",
            "function": "risk",
            "input": {"age": 90, "biomarker": 100.0},
            "expected": {"risk": reference_risk(90, 100.0, False)},
            "rel_tol": 1e-9,
            "expect_warnings": ["age"],
            "source": "src/reference.py",
        }
    )
    vectors.append(
        {
            "name": "a missing biomarker is an error",
            "function": "risk",
            "input": {"age": 60},
            "expect_error": ["biomarker"],
        }
    )
    vectors.append(
        {
            "name": "age below the hard bound is an error",
            "function": "risk",
            "input": {"age": 10, "biomarker": 100.0},
            "expect_error": ["age"],
        }
    )
    return vectors


def _metadata(name: str, version: str, author: str, license: str) -> dict[str, Any]:
    zero = "0" * 64
    return {
        "@context": KOIO_CONTEXT,
        "@id": f"{name}/{version}",
        "@type": "koio:KnowledgeObject",
        "koio:kgrid": "2",
        "dc:identifier": name,
        "dc:version": version,
        "dc:title": f"{name} (template risk score)",
        "dc:description": "TODO: what this KO computes. Created by `kgrid init` from a template.",
        "koio:contributors": [{"name": author}],
        "dc:license": license,
        "koio:keywords": ["template"],
        "status": "draft",
        "citations": [],
        "intended_use": "TODO: the decision this supports, who uses it, and when.",
        "intended_population": "TODO: the population it was developed and validated in (template: adults 40-80).",
        "provenance": {
            "built_with": "kgrid init (onnx.helper); `kgrid build` re-exports it from src/model.py with torch",
            "source": "src/",
        },
        "files": [
            {"path": "model.onnx", "sha256": zero, "role": "model"},
            {"path": "tests.json", "sha256": zero, "role": "tests"},
            {"path": "README.md", "sha256": zero, "role": "model-card"},
            {"path": "src/build.py", "sha256": zero, "role": "source"},
            {"path": "src/model.py", "sha256": zero, "role": "source"},
            {"path": "src/reference.py", "sha256": zero, "role": "source"},
        ],
        "functions": [
            {
                "name": "risk",
                "title": "Template risk",
                "description": "A logistic score of age, a biomarker and smoking. Replace with your model.",
                "model": "model.onnx",
                "inputs": [
                    {
                        "name": "age",
                        "type": "integer",
                        "description": "Age in years.",
                        "unit": "a",
                        "hard_bounds": {"minimum": 18, "maximum": 120},
                        "population_bounds": {"minimum": 40, "maximum": 80},
                        "population_note": "The template's (made-up) development cohort was 40-80 years old.",
                    },
                    {
                        "name": "biomarker",
                        "type": "number",
                        "description": "A blood biomarker concentration.",
                        "unit": "mg/dL",
                        "hard_bounds": {"minimum": 0, "maximum": 1000},
                    },
                    {
                        "name": "smoker",
                        "type": "boolean",
                        "description": "Current smoker.",
                        "required": False,
                        "default": False,
                    },
                ],
                "outputs": [
                    {"name": "risk", "type": "number", "description": "Probability of the outcome.", "unit": "1"},
                    {"name": "linear_predictor", "type": "number", "description": "Log-odds of the outcome."},
                ],
            }
        ],
        "tests": "tests.json",
    }


_MODEL_CARD = """# {name} {version}: model card

> Created by `kgrid init`. Replace every TODO before publishing.

## Intended use
TODO: the clinical question, the user, the setting, the decision it informs.

## Population
TODO: who the model was developed and validated in; the inputs' intended ranges.

## Model
A logistic score (template): `risk = sigmoid(b0 + b_age (age - 60) + b_bio (biomarker - 100) + b_smoke smoker)`.
Source: `src/model.py` (torch), built by `src/build.py` (`kgrid build PATH`).
Expected values in `tests.json` come from `src/reference.py`, never from the model itself.

## Validation
TODO: discrimination, calibration, external validation; cite DOIs in metadata.json `citations`.

## Limitations
TODO: known failure modes, populations it was not studied in, inputs it must not be used with.

## References
TODO
"""

_MODEL_PY = '''"""The template KO's model as a torch module (exported to ONNX by build.py)."""

from __future__ import annotations

import torch

COEFFICIENTS = {coefficients}
CENTRES = {centres}


class RiskModel(torch.nn.Module):
    """Logistic risk of age, a biomarker (mg/dL) and smoking; float64 in, float64 out."""

    def forward(
        self, age: torch.Tensor, biomarker: torch.Tensor, smoker: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = COEFFICIENTS
        lp = (
            (age - CENTRES["age"]) * c["age"]
            + (biomarker - CENTRES["biomarker"]) * c["biomarker"]
            + smoker * c["smoker"]
            + c["intercept"]
        )
        return torch.sigmoid(lp), lp
'''

_REFERENCE_PY = '''"""The template's score in plain math: where the test vectors' expected values come from.

``kgrid vectors regenerate KO_DIR`` calls :func:`expected` for every vector of tests.json whose
``source`` starts with ``src/reference.py`` and writes the answer into its ``expected`` values.
Keep this file independent of src/model.py: it is the check on the model, not a copy of it.
"""

from __future__ import annotations

import math
from typing import Any

COEFFICIENTS = {coefficients}
CENTRES = {centres}


def risk(age: float, biomarker: float, smoker: bool) -> float:
    c = COEFFICIENTS
    lp = (
        c["intercept"]
        + c["age"] * (age - CENTRES["age"])
        + c["biomarker"] * (biomarker - CENTRES["biomarker"])
        + c["smoker"] * float(smoker)
    )
    return 1.0 / (1.0 + math.exp(-lp))


def expected(function: str, inputs: dict[str, Any]) -> dict[str, float] | None:
    """A vector's expected outputs; ``inputs`` arrive in the declared units, defaults filled in."""
    if function != "risk":
        return None
    p = risk(inputs["age"], inputs["biomarker"], inputs["smoker"])
    return {{"risk": p, "linear_predictor": math.log(p / (1 - p))}}
'''

_BUILD_PY = '''"""Build this KO: export src/model.py to model.onnx (``kgrid build PATH`` calls :func:`build`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

OPSET = {opset}
INPUTS = ("age", "biomarker", "smoker")
OUTPUTS = ("risk", "linear_predictor")


def build(ko_dir: Path) -> dict[str, Any]:
    import torch
    from model import RiskModel

    example = tuple(torch.tensor(v, dtype=torch.float64) for v in ([45.0, 70.0], [80.0, 150.0], [0.0, 1.0]))
    with torch.no_grad():
        torch.onnx.export(
            RiskModel().eval(),
            example,
            str(Path(ko_dir) / "model.onnx"),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={{name: {{0: "N"}} for name in (*INPUTS, *OUTPUTS)}},
        )
    return {{"models": ["model.onnx"], "opset": OPSET}}
'''
