"""Build plcom2012 1.0.0: export risk.onnx and write tests.json.

``kgrid build`` imports this file and calls :func:`build`. Expected values in the test vectors
come from src/reference.py (written from the paper) or from published worked examples, never
from the torch module.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

OPSET = 17
DEFAULT_THRESHOLD = 0.0151
SOURCE = "src/reference.py (Tammemagi 2013; float64)"
# The smoking intensity at which the cigarettes term is zero (10 / 0.4021541613).
CENTRE_CPD = 10 / 0.4021541613


def _load(name: str) -> ModuleType:
    path = Path(__file__).resolve().with_name(f"{name}.py")
    key = "_kgrid_src_" + "".join(c if c.isalnum() else "_" for c in str(path))
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def export(model: ModuleType, path: Path) -> None:
    """Export the module to a float64 ONNX graph with a symbolic batch dimension N."""
    import torch

    n = 4
    example = {name: torch.ones(n, dtype=torch.float64) for name in model.INPUTS}
    example["age"] = torch.tensor([55.0, 62.0, 68.0, 74.0], dtype=torch.float64)
    example["race"] = torch.tensor([0.0, 1.0, 3.0, 5.0], dtype=torch.float64)
    example["cigarettes_per_day"] = torch.tensor([5.0, 20.0, 30.0, 60.0], dtype=torch.float64)
    example["threshold"] = torch.full((n,), DEFAULT_THRESHOLD, dtype=torch.float64)
    args = tuple(example[name] for name in model.INPUTS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, on purpose
        torch.onnx.export(
            model.PLCOm2012().eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(model.INPUTS),
            output_names=list(model.OUTPUTS),
            dynamic_axes={name: {0: "N"} for name in [*model.INPUTS, *model.OUTPUTS]},
        )


def expected(reference: ModuleType, fields: dict[str, Any]) -> dict[str, Any]:
    risk = reference.risk_6y(
        age=fields["age"],
        race=fields["race"],
        education=fields["education"],
        bmi=fields["bmi"],
        copd=fields["copd"],
        personal_cancer_history=fields["personal_cancer_history"],
        family_lung_cancer_history=fields["family_lung_cancer_history"],
        current_smoker=fields["smoking_status"] == "current",
        cigarettes_per_day=fields["cigarettes_per_day"],
        smoking_years=fields["smoking_years"],
        years_since_quit=fields["years_since_quit"],
    )
    threshold = fields.get("threshold", DEFAULT_THRESHOLD)
    assert abs(risk - threshold) > 1e-9, "a vector too close to its threshold would be flaky"
    return {"risk_6y": risk, "screening_recommended": risk >= threshold}


BASE: dict[str, Any] = {
    "age": 62,
    "race": "white",
    "education": 4,
    "bmi": 27,
    "copd": False,
    "personal_cancer_history": False,
    "family_lung_cancer_history": False,
    "smoking_status": "former",
    "cigarettes_per_day": 20,
    "smoking_years": 27,
    "years_since_quit": 10,
}
CURRENT: dict[str, Any] = {**BASE, "smoking_status": "current", "years_since_quit": 0}


def vectors(reference: ModuleType) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def vector(name: str, fields: dict[str, Any], source: str, **rest: Any) -> None:
        out.append({"name": name, "function": "risk", "input": fields, "source": source, **rest})

    def valid(name: str, fields: dict[str, Any], warn: list[str] | None = None) -> None:
        vector(name, fields, SOURCE, expected=expected(reference, fields), rel_tol=1e-9, expect_warnings=warn or [])

    anchor = {**BASE, "cigarettes_per_day": CENTRE_CPD}
    vector(
        "sanity anchor: every term at its centre -> expit(-4.532506) = 0.0106393",
        anchor,
        "clinical-equations reference: expit(intercept), 7 significant digits",
        expected={"risk_6y": 0.0106393, "screening_recommended": False},
        rel_tol=0.0,
        abs_tol=5e-8,
        expect_warnings=[],
    )
    valid("sanity anchor (unrounded)", anchor)
    example = {**BASE, "cigarettes_per_day": 80}
    vector(
        "worked example: 62 y, White, education 4, BMI 27, former, 80/day, 27 y, quit 10",
        example,
        "published worked example of a public PLCOm2012 implementation (README)",
        expected={"risk_6y": 0.01750922, "screening_recommended": True},
        rel_tol=0.0,
        abs_tol=5e-9,
        expect_warnings=[],
    )
    valid("worked example (unrounded)", example)

    for race in reference.RACE:
        valid(f"race {race}, former smoker", {**BASE, "race": race})
        valid(f"race {race}, current smoker", {**CURRENT, "race": race})
    for education in range(1, 7):
        valid(f"education {education}", {**BASE, "education": education})
    for age in (55, 58, 62, 66, 70, 74, 74.9):
        valid(f"age {age}", {**BASE, "age": age})
        valid(f"age {age}, current smoker, 40 pack-years", {**CURRENT, "age": age, "smoking_years": min(40, age - 15)})
    for flag in ("copd", "personal_cancer_history", "family_lung_cancer_history"):
        valid(f"{flag} true", {**BASE, flag: True})
    # Booleans accept 1/0 (numbers or text) in every path, as the README says; the result is true's.
    valid("copd given as 1 (read as true)", {**BASE, "copd": 1})
    valid("copd given as 0 (read as false)", {**BASE, "copd": 0})
    valid(
        "all risk factors, current smoker",
        {
            **CURRENT,
            "race": "black",
            "education": 1,
            "bmi": 21,
            "copd": True,
            "personal_cancer_history": True,
            "family_lung_cancer_history": True,
            "cigarettes_per_day": 40,
            "smoking_years": 45,
            "age": 70,
        },
    )
    for bmi in (16, 22, 35, 50):
        valid(f"BMI {bmi}", {**BASE, "bmi": bmi})
    for cpd in (1, 5, 10, 30, 60):
        valid(f"{cpd} cigarettes/day", {**BASE, "cigarettes_per_day": cpd})
    for years in (0, 5, 20, 35):
        valid(f"quit {years} years ago", {**BASE, "years_since_quit": years})
    # Thresholds: the default 1.51 %, ILST's 1.70 %, Ontario's 2.0 %.
    heavy = {**CURRENT, "cigarettes_per_day": 25, "smoking_years": 40, "age": 62}
    for threshold in (0.0151, 0.017, 0.02, 0.05):
        valid(f"threshold {threshold}", {**heavy, "threshold": threshold})
    valid("threshold omitted: default 0.0151", heavy)
    # Outside 55-74: a result and a warning.
    for age in (50, 75, 80):
        valid(f"age {age} (outside 55-74)", {**BASE, "age": age}, ["age"])
    # Must fail.
    for name, fields, bad in (
        ("cigarettes_per_day 0", {**BASE, "cigarettes_per_day": 0}, ["cigarettes_per_day"]),
        ("cigarettes_per_day negative", {**BASE, "cigarettes_per_day": -3}, ["cigarettes_per_day"]),
        ("education 7", {**BASE, "education": 7}, ["education"]),
        ("education 0", {**BASE, "education": 0}, ["education"]),
        ("education 2.5 (not a level)", {**BASE, "education": 2.5}, ["education"]),
        ("current smoker with years_since_quit 5", {**CURRENT, "years_since_quit": 5}, ["years_since_quit"]),
        ("unknown race", {**BASE, "race": "martian"}, ["race"]),
        ("race given as an index", {**BASE, "race": 0}, ["race"]),
        ("never smoker (out of scope)", {**BASE, "smoking_status": "never"}, ["smoking_status"]),
        ("age 17", {**BASE, "age": 17}, ["age"]),
        ("BMI 0", {**BASE, "bmi": 0}, ["bmi"]),
        ("copd given as 2 (not a boolean)", {**BASE, "copd": 2}, ["copd"]),
        ('copd given as "yes" (never guessed)', {**BASE, "copd": "yes"}, ["copd"]),
        ("threshold above 1", {**BASE, "threshold": 1.5}, ["threshold"]),
        ("years_since_quit negative", {**BASE, "years_since_quit": -1}, ["years_since_quit"]),
        ("smoking_years missing", {k: v for k, v in BASE.items() if k != "smoking_years"}, ["smoking_years"]),
        (
            "smoking_years + years_since_quit over age",
            {**BASE, "age": 60, "smoking_years": 45, "years_since_quit": 20},
            ["smoking_years"],
        ),
    ):
        vector(name, fields, "input validation", expect_error=bad)
    return out


def build(ko_dir: Path) -> dict[str, Any]:
    """Export risk.onnx into ``ko_dir`` and write its tests.json."""
    model, reference = _load("model"), _load("reference")
    ko_dir = Path(ko_dir)
    export(model, ko_dir / "risk.onnx")
    tests = vectors(reference)
    (ko_dir / "tests.json").write_text(json.dumps({"vectors": tests}, indent=1) + "\n")
    return {"models": ["risk.onnx"], "vectors": len(tests)}


if __name__ == "__main__":
    print(build(Path(__file__).resolve().parents[1]))
