"""Building blocks shared by the ckd-epi-egfr versions (imported by each version's src/build.py).

Every CKD-EPI equation has the same shape:

    eGFR = base x min(Scr/kappa, 1)^alpha x max(Scr/kappa, 1)^beta
                x min(Scys/0.8, 1)^gamma x max(Scys/0.8, 1)^delta
                x age_factor^age x female_factor [female] x black_factor [Black]

so one torch module, parameterised by a coefficient table, serves every equation of every
version. The independent check of each version is its own ``src/reference.py``, written
straight from the papers and sharing nothing with this file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

SEXES = ["female", "male"]  # enum order of the `sex` input: index 0 female, 1 male
STAGES = ["G1", "G2", "G3a", "G3b", "G4", "G5"]
# Lower edges (mL/min/1.73 m2) of G4, G3b, G3a, G2 and G1, applied to the unrounded eGFR.
STAGE_EDGES = (15.0, 30.0, 45.0, 60.0, 90.0)
OPSET = 17


@dataclass(frozen=True)
class Knot:
    """A two-slope spline term: min(x/kappa, 1)^alpha x max(x/kappa, 1)^beta."""

    kappa_female: float
    kappa_male: float
    alpha_female: float
    alpha_male: float
    beta: float


@dataclass(frozen=True)
class Equation:
    """The coefficients of one CKD-EPI equation; ``inputs`` are the graph input names, in order."""

    name: str
    inputs: tuple[str, ...]
    base: float
    age_factor: float
    female_factor: float
    creatinine: Knot | None = None
    cystatin: Knot | None = None
    black_factor: float | None = None


class CkdEpi(nn.Module):
    """eGFR (float64) and KDIGO G-category index (int64) from 1-D float64 inputs."""

    def __init__(self, equation: Equation) -> None:
        super().__init__()
        self.equation = equation

    def forward(self, *columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eq = self.equation
        x = dict(zip(eq.inputs, columns, strict=True))
        female = x["sex"] < 0.5
        one = torch.ones_like(x["age"])
        egfr = eq.base * torch.pow(torch.full_like(one, eq.age_factor), x["age"])
        egfr = egfr * torch.where(female, eq.female_factor * one, one)
        if eq.creatinine is not None:
            egfr = egfr * _knot(x["creatinine"], eq.creatinine, female)
        if eq.cystatin is not None:
            egfr = egfr * _knot(x["cystatin_c"], eq.cystatin, female)
        if eq.black_factor is not None:
            egfr = egfr * torch.where(x["black"] > 0.5, eq.black_factor * one, one)
        return egfr, kdigo_stage(egfr)


def _knot(value: torch.Tensor, knot: Knot, female: torch.Tensor) -> torch.Tensor:
    one = torch.ones_like(value)
    kappa = torch.where(female, knot.kappa_female * one, knot.kappa_male * one)
    alpha = torch.where(female, knot.alpha_female * one, knot.alpha_male * one)
    ratio = value / kappa
    return torch.pow(torch.clamp(ratio, max=1.0), alpha) * torch.pow(
        torch.clamp(ratio, min=1.0), knot.beta
    )


def kdigo_stage(egfr: torch.Tensor) -> torch.Tensor:
    """Index into STAGES: 5 (G5) minus the number of edges the unrounded eGFR reaches."""
    stage = torch.full_like(egfr, float(len(STAGE_EDGES)))
    for edge in STAGE_EDGES:
        stage = stage - (egfr >= edge).to(egfr.dtype)
    return stage.to(torch.int64)


def export(equation: Equation, path: Path) -> None:
    """Export one equation to a float64 ONNX graph with a symbolic batch dimension N."""
    example = {
        "age": [18.0, 40.0, 65.0, 90.0],
        "sex": [0.0, 1.0, 0.0, 1.0],
        "creatinine": [0.5, 0.9, 1.4, 3.0],
        "cystatin_c": [0.6, 0.8, 1.3, 2.5],
        "black": [0.0, 1.0, 1.0, 0.0],
    }
    args = tuple(torch.tensor(example[name], dtype=torch.float64) for name in equation.inputs)
    outputs = ["egfr", "stage"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, on purpose
        torch.onnx.export(
            CkdEpi(equation).eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(equation.inputs),
            output_names=outputs,
            dynamic_axes={name: {0: "N"} for name in [*equation.inputs, *outputs]},
        )


def load_module(path: Path) -> ModuleType:
    """Import a source file under a name unique to its path (KOs have same-named files)."""
    name = "_kgrid_src_" + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def valid_cases(inputs: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """Named field-level inputs for the test vectors of one function with graph ``inputs``.

    Both sides of every knot (Scr at kappa and kappa +/- 0.01, Scys at 0.8 +/- 0.01), an age grid
    (catches a wrong age factor, e.g. 0.993 in the 2021 equation), both sexes, the race term
    where the equation has one, one case per KDIGO stage and the unit conversions.
    """
    has_cr, has_cys, has_black = ("creatinine" in inputs), ("cystatin_c" in inputs), (
        "black" in inputs
    )
    cases: list[tuple[str, dict[str, Any]]] = []

    def add(name: str, **fields: Any) -> None:
        base = {"age": 50, "sex": "male"}
        if has_cr:
            base["creatinine"] = 1.0
        if has_cys:
            base["cystatin_c"] = 1.0
        if has_black:
            base["black"] = False
        base.update(fields)
        cases.append((name, base))

    blacks = (False, True) if has_black else (False,)
    for sex, kappa in (("female", 0.7), ("male", 0.9)):
        for black in blacks:
            race = (" black" if black else " non-black") if has_black else ""
            extra = {"black": black} if has_black else {}
            cr_points = (kappa - 0.01, kappa, kappa + 0.01) if has_cr else (None,)
            cys_points = (0.79, 0.8, 0.81) if has_cys else (None,)
            for scr in cr_points:
                for scys in cys_points:
                    label = []
                    fields: dict[str, Any] = {"sex": sex, **extra}
                    if scr is not None:
                        fields["creatinine"] = round(scr, 4)
                        label.append(f"Scr {scr:.2f}")
                    if scys is not None:
                        fields["cystatin_c"] = scys
                        label.append(f"Scys {scys:.2f}")
                    add(f"knot {sex}{race} {' '.join(label)}", **fields)
    for sex in ("female", "male"):
        for age in (18, 25, 40, 55, 70, 85, 100, 120):
            add(f"age grid {sex} {age}", sex=sex, age=age)
    marker = "creatinine" if has_cr else "cystatin_c"
    for value in (0.4, 0.7, 1.1, 1.4, 1.9, 2.6, 4.0, 8.0):
        add(f"stage sweep {marker} {value}", age=60, **{marker: value})
    if has_cr:
        add("creatinine 106.08 umol/L (= 1.2 mg/dL)", age=55,
            creatinine={"value": 106.08, "unit": "umol/L"})
        add("creatinine 1200 ug/dL (= 1.2 mg/dL)", age=55,
            creatinine={"value": 1200, "unit": "ug/dL"})
    if has_cys:
        add("cystatin C 1200 ug/L (= 1.2 mg/L)", age=55, cystatin_c={"value": 1200, "unit": "ug/L"})
    return cases


def invalid_cases(inputs: tuple[str, ...]) -> list[tuple[str, dict[str, Any], list[str]]]:
    """Field-level inputs that must fail, with the fields the error must name."""
    base: dict[str, Any] = {"age": 50, "sex": "male"}
    if "creatinine" in inputs:
        base["creatinine"] = 1.0
    if "cystatin_c" in inputs:
        base["cystatin_c"] = 1.0
    cases = [
        ("age 17 (adult equation)", {**base, "age": 17}, ["age"]),
        ("age 121 (impossible)", {**base, "age": 121}, ["age"]),
        ("sex not female/male", {**base, "sex": "other"}, ["sex"]),
    ]
    if "creatinine" in inputs:
        cases += [
            ("creatinine 0", {**base, "creatinine": 0}, ["creatinine"]),
            ("creatinine negative", {**base, "creatinine": -1.0}, ["creatinine"]),
            ("creatinine in mmol/mol (wrong unit)",
             {**base, "creatinine": {"value": 1.2, "unit": "mmol/mol"}}, ["creatinine"]),
            ("creatinine missing", {k: v for k, v in base.items() if k != "creatinine"},
             ["creatinine"]),
        ]
    if "cystatin_c" in inputs:
        cases += [
            ("cystatin C 0", {**base, "cystatin_c": 0}, ["cystatin_c"]),
            ("cystatin C in mg/g (wrong unit)",
             {**base, "cystatin_c": {"value": 1.0, "unit": "mg/g"}}, ["cystatin_c"]),
        ]
    return cases


def nkf_2021_example() -> dict[str, Any]:
    """NKF 2021 calculator worked example: man, 55 y, Scr 1.2 mg/dL -> 71 (about 71.4)."""
    return {"age": 55, "sex": "male", "creatinine": 1.2}


def vector(
    name: str, function: str, inputs: dict[str, Any], source: str, **rest: Any
) -> dict[str, Any]:
    return {"name": name, "function": function, "input": inputs, "source": source, **rest}


# Unit factors of the test inputs, as declared in metadata.json (umol/L creatinine: / 88.4).
_TEST_UNITS = {"umol/L": 1 / 88.4, "\u00b5mol/L": 1 / 88.4, "\u03bcmol/L": 1 / 88.4, "ug/dL": 1e-3,
               "ug/L": 1e-3}

# compute(function, age, female, scr, scys, black) -> unrounded eGFR, from src/reference.py
Compute = Callable[[str, float, bool, float, float, bool], float]


def field_value(fields: dict[str, Any], name: str, default: float = float("nan")) -> float:
    raw = fields.get(name, default)
    if isinstance(raw, dict):
        return float(raw["value"] * _TEST_UNITS[raw["unit"]])
    return float(raw)


def expected(compute: Compute, function: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Expected outputs of one vector: eGFR from the reference and its KDIGO stage."""
    egfr = float(compute(
        function,
        float(fields["age"]),
        fields["sex"] == "female",
        field_value(fields, "creatinine"),
        field_value(fields, "cystatin_c"),
        bool(fields.get("black", False)),
    ))
    for label, lower in (("G1", 90), ("G2", 60), ("G3a", 45), ("G3b", 30), ("G4", 15)):
        if egfr >= lower:
            return {"egfr": egfr, "stage": label}
    return {"egfr": egfr, "stage": "G5"}


def standard_vectors(
    equations: dict[str, tuple[str, Equation]], compute: Compute, source: str
) -> list[dict[str, Any]]:
    """The vectors every version carries: valid_cases with expected values, then invalid_cases."""
    out: list[dict[str, Any]] = []
    for function, (_, equation) in equations.items():
        for name, fields in valid_cases(equation.inputs):
            out.append(vector(f"{function}: {name}", function, fields, source,
                              expected=expected(compute, function, fields), rel_tol=1e-9,
                              expect_warnings=[]))
        for name, fields, bad in invalid_cases(equation.inputs):
            out.append(vector(f"{function}: {name}", function, fields, "input validation",
                              expect_error=bad))
        out += plausibility_vectors(function, equation.inputs, compute, source)
    return out


# The eGFR above which metadata.json's plausible_bounds warn (mL/min/1.73 m2).
PLAUSIBLE_EGFR_MAX = 200


def plausibility_vectors(
    function: str, inputs: tuple[str, ...], compute: Compute, source: str
) -> list[dict[str, Any]]:
    """Doubtful values warn (naming the likely unit), impossible ones are refused naming it, and
    the micro sign and Greek mu spell umol/L. Which fields must warn follows from the values."""
    base: dict[str, Any] = {"age": 55, "sex": "male"}
    if "creatinine" in inputs:
        base["creatinine"] = 1.0
    if "cystatin_c" in inputs:
        base["cystatin_c"] = 1.0
    out: list[dict[str, Any]] = []

    def add(name: str, fields: dict[str, Any], warn: list[str]) -> None:
        want = expected(compute, function, fields)
        warn = warn + (["egfr"] if want["egfr"] > PLAUSIBLE_EGFR_MAX else [])
        out.append(vector(f"{function}: {name}", function, fields, source, expected=want,
                          rel_tol=1e-9, expect_warnings=warn))

    if "creatinine" in inputs:
        add("plausibility: creatinine 1.2 sent as umol/L (meant mg/dL)",
            {**base, "creatinine": {"value": 1.2, "unit": "umol/L"}}, ["creatinine"])
        add("plausibility: creatinine 25 with no unit looks like umol/L",
            {**base, "creatinine": 25}, ["creatinine"])
        for sign, label in (("\u00b5", "micro sign"), ("\u03bc", "Greek mu")):
            add(f"units: creatinine 106.08 {sign}mol/L ({label}) is umol/L",
                {**base, "creatinine": {"value": 106.08, "unit": f"{sign}mol/L"}}, [])
        out.append(vector(f"{function}: plausibility: creatinine 106 with no unit is refused",
                          function, {**base, "creatinine": 106}, "input validation",
                          expect_error=["creatinine"]))
    if "cystatin_c" in inputs:
        add("plausibility: cystatin C 12 mg/L is outside the intended population",
            {**base, "cystatin_c": 12.0}, ["cystatin_c"])
    return out


def write_tests(ko_dir: Path, vectors: list[dict[str, Any]]) -> None:
    (ko_dir / "tests.json").write_text(json.dumps({"vectors": vectors}, indent=1) + "\n")
