"""Build kfre 1.0.0: export four_variable.onnx and eight_variable.onnx and write tests.json.

``kgrid build`` imports this file and calls :func:`build`. Expected values in the test vectors
come from src/reference.py (written from the papers) or from the published calculator examples,
never from the torch module.
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
SOURCE = "src/reference.py (Tangri 2011 / 2016; float64)"
CALCULATOR = "kidneyfailurerisk.com calculator, published example (display truncated to 0.1 %)"
# Unit factors of the test inputs, as declared in metadata.json.
LAB_UNITS = {("phosphate", "mmol/L"): 3.097, ("calcium", "mmol/L"): 4.008,
             ("bicarbonate", "mmol/L"): 1.0}
EIGHT_LABS = {"albumin": 4.0, "phosphate": 3.9, "bicarbonate": 25.0, "calcium": 9.4}


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


def export(module_cls: type, inputs: tuple[str, ...], outputs: tuple[str, ...],
           path: Path) -> None:
    """Export one module to a float64 ONNX graph with a symbolic batch dimension N."""
    import torch

    example = {
        "age": [30.0, 55.0, 70.0, 85.0], "sex": [0.0, 1.0, 0.0, 1.0],
        "egfr": [12.0, 25.0, 44.0, 58.0], "uacr": [3.0, 30.0, 300.0, 3000.0],
        "albumin": [3.0, 3.8, 4.2, 4.6], "phosphate": [2.8, 3.6, 4.4, 6.0],
        "bicarbonate": [18.0, 22.0, 26.0, 30.0], "calcium": [8.2, 9.0, 9.6, 10.2],
        "region": [0.0, 1.0, 1.0, 0.0],
    }
    args = tuple(torch.tensor(example[name], dtype=torch.float64) for name in inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, on purpose
        torch.onnx.export(
            module_cls().eval(), args, str(path), dynamo=False, opset_version=OPSET,
            input_names=list(inputs), output_names=list(outputs),
            dynamic_axes={name: {0: "N"} for name in [*inputs, *outputs]},
        )


def _number(fields: dict[str, Any], name: str) -> float:
    raw = fields[name]
    if isinstance(raw, dict):
        if name == "uacr":
            return raw["value"] * 8.84
        if name == "albumin":
            return raw["value"] * 0.1
        return raw["value"] * LAB_UNITS[(name, raw["unit"])]
    return float(raw)


def expected(reference: ModuleType, function: str, fields: dict[str, Any]) -> dict[str, float]:
    male = 1.0 if fields["sex"] == "male" else 0.0
    north_american = fields.get("region", "north_american") == "north_american"
    base = [_number(fields, n) for n in ("age", "egfr", "uacr")]
    if function == "four-variable":
        lp, variables = reference.lp_four(base[0], male, base[1], base[2]), 4
    else:
        labs = [_number(fields, n) for n in ("albumin", "phosphate", "bicarbonate", "calcium")]
        lp, variables = reference.lp_eight(base[0], male, base[1], base[2], *labs), 8
    return {f"risk_{y}y": float(reference.risk(lp, variables, y, north_american))
            for y in (2, 5)}


def _vector(name: str, function: str, fields: dict[str, Any], source: str,
            **rest: Any) -> dict[str, Any]:
    return {"name": f"{function}: {name}", "function": function, "input": fields,
            "source": source, **rest}


def vectors(reference: ModuleType) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def valid(name: str, function: str, fields: dict[str, Any], warn: list[str]) -> None:
        out.append(_vector(name, function, fields, SOURCE,
                           expected=expected(reference, function, fields), rel_tol=1e-9,
                           expect_warnings=warn))

    # Published calculator examples (4-variable, North American). The site truncates to one
    # decimal of a percent, so each expected value is the middle of its truncation interval.
    examples = [
        ("woman 63 y, eGFR 45, UACR 30 mg/g -> 0.4 % / 1.3 %",
         {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}, 0.0045, 0.0135),
        ("man 55 y, eGFR 38, UACR 150 mg/g -> 2.9 % / 9 %",
         {"age": 55, "sex": "male", "egfr": 38, "uacr": 150}, 0.0295, 0.0905),
    ]
    for name, fields, r2, r5 in examples:
        out.append(_vector(name, "four-variable", fields, CALCULATOR,
                           expected={"risk_2y": r2, "risk_5y": r5}, rel_tol=0.0, abs_tol=0.0005,
                           expect_warnings=[]))
        valid(name + " (unrounded)", "four-variable", fields, [])
        valid(name + " (region given explicitly)", "four-variable",
              {**fields, "region": "north_american"}, [])

    for function in ("four-variable", "eight-variable"):
        labs = dict(EIGHT_LABS) if function == "eight-variable" else {}
        for sex in ("female", "male"):
            for region in ("north_american", "non_north_american"):
                tag = f"{sex} {region}"
                base = {"age": 60, "sex": sex, "egfr": 30, "uacr": 300, **labs, "region": region}
                for age in (18, 30, 45, 60, 75, 90, 110):
                    valid(f"age grid {tag} age {age}", function, {**base, "age": age}, [])
                for egfr in (10, 15, 22.5, 30, 45, 59.9):
                    valid(f"eGFR grid {tag} eGFR {egfr}", function, {**base, "egfr": egfr}, [])
                for uacr in (0.5, 3, 30, 300, 3000, 20000):
                    # 0.5 and 20000 mg/g lie outside the population bounds (1 to 10,000): a warning.
                    warn = [] if 1 <= uacr <= 10000 else ["uacr"]
                    valid(f"UACR grid {tag} UACR {uacr}", function, {**base, "uacr": uacr}, warn)
        base = {"age": 60, "sex": "male", "egfr": 30, "uacr": 300, **labs}
        if labs:
            for lab, values in (("albumin", (2.5, 4.5)), ("phosphate", (2.5, 7.0)),
                                ("bicarbonate", (15, 32)), ("calcium", (7.5, 11.0))):
                for value in values:
                    valid(f"{lab} {value}", function, {**base, lab: value}, [])
            valid("albumin 40 g/L, phosphate 1.2 mmol/L, calcium 2.35 mmol/L, bicarbonate "
                  "22 mmol/L", function,
                  {**base, "albumin": {"value": 40, "unit": "g/L"},
                   "phosphate": {"value": 1.2, "unit": "mmol/L"},
                   "calcium": {"value": 2.35, "unit": "mmol/L"},
                   "bicarbonate": {"value": 22, "unit": "mmol/L"}}, [])
        valid("UACR 10 mg/mmol (= 88.4 mg/g)", function,
              {**base, "uacr": {"value": 10, "unit": "mg/mmol"}}, [])
        valid("UACR 88.4 mg/g (same as 10 mg/mmol)", function, {**base, "uacr": 88.4}, [])
        valid("region omitted defaults to north_american", function, base, [])
        # Outside the intended population: a result and a warning.
        valid("eGFR 65 (>= 60: outside the development population)", function,
              {**base, "egfr": 65}, ["egfr"])
        valid("eGFR 60 exactly (the bound is exclusive)", function, {**base, "egfr": 60},
              ["egfr"])
        valid("eGFR 8 (< 10: outside the development population)", function,
              {**base, "egfr": 8}, ["egfr"])
        # Plausibility: a value that looks like another unit warns naming it (suspect_units).
        valid("plausibility: eGFR 1.5 looks like mL/s/1.73 m2", function, {**base, "egfr": 1.5},
              ["egfr"])
        if labs:
            for lab, value in (("calcium", 2.4), ("phosphate", 0.9), ("albumin", 7.0),
                               ("bicarbonate", 8.0)):
                valid(f"plausibility: {lab} {value} with no unit is doubtful", function,
                      {**base, lab: value}, [lab])
            out.append(_vector("plausibility: albumin 40 with no unit is refused, naming g/L",
                               function, {**base, "albumin": 40}, "input validation",
                               expect_error=["albumin"]))
            out.append(_vector("plausibility: calcium 9.5 sent as mmol/L is refused, naming mg/dL",
                               function, {**base, "calcium": {"value": 9.5, "unit": "mmol/L"}},
                               "input validation", expect_error=["calcium"]))
        # Must fail.
        for name, fields, bad in (
            ("age 17 (adult equation)", {**base, "age": 17}, ["age"]),
            ("UACR 0", {**base, "uacr": 0}, ["uacr"]),
            ("UACR negative", {**base, "uacr": -5}, ["uacr"]),
            ("UACR in mmol/mol (a molar ratio, not mg/g)",
             {**base, "uacr": {"value": 3.4, "unit": "mmol/mol"}}, ["uacr"]),
            ("UACR in mg/dL (wrong dimension)",
             {**base, "uacr": {"value": 30, "unit": "mg/dL"}}, ["uacr"]),
            ("unknown region", {**base, "region": "europe"}, ["region"]),
            ("unknown sex", {**base, "sex": "unknown"}, ["sex"]),
            ("eGFR 0", {**base, "egfr": 0}, ["egfr"]),
            ("UACR missing", {k: v for k, v in base.items() if k != "uacr"}, ["uacr"]),
        ):
            out.append(_vector(name, function, fields, "input validation", expect_error=bad))
        if labs:
            out.append(_vector("albumin 0", function, {**base, "albumin": 0}, "input validation",
                               expect_error=["albumin"]))
            out.append(_vector("calcium missing", function,
                               {k: v for k, v in base.items() if k != "calcium"},
                               "input validation", expect_error=["calcium"]))
    return out


def build(ko_dir: Path) -> dict[str, Any]:
    """Export the two ONNX graphs into ``ko_dir`` and write its tests.json."""
    model, reference = _load("model"), _load("reference")
    ko_dir = Path(ko_dir)
    for filename, module_cls in model.FUNCTIONS.values():
        export(module_cls, module_cls.inputs, model.OUTPUTS, ko_dir / filename)
    tests = vectors(reference)
    (ko_dir / "tests.json").write_text(json.dumps({"vectors": tests}, indent=1) + "\n")
    return {"models": [f for f, _ in model.FUNCTIONS.values()], "vectors": len(tests)}


if __name__ == "__main__":
    print(build(Path(__file__).resolve().parents[1]))
