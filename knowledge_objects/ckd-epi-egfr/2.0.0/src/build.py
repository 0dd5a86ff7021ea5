"""Build ckd-epi-egfr 2.0.0: export the three ONNX graphs and write tests.json.

``kgrid build`` imports this file and calls :func:`build`. Expected values in the test vectors
come from src/reference.py (written from the papers) or from the NKF calculator's published
example, never from the torch module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_COMMON = Path(__file__).resolve().parent  # the KO carries its own copy: packs stay self-contained
if str(_COMMON) not in sys.path:
    sys.path.insert(0, str(_COMMON))

import ckd_epi_common as common  # noqa: E402

SOURCE = "src/reference.py (Inker 2021, Inker 2012; float64)"


def _compute(reference: Any) -> common.Compute:
    def compute(function: str, age: float, female: bool, scr: float, scys: float,
                black: bool) -> float:
        if function == "egfr-cr":
            return float(reference.egfr_cr(age, female, scr))
        if function == "egfr-cys":
            return float(reference.egfr_cys(age, female, scys))
        return float(reference.egfr_cr_cys(age, female, scr, scys))

    return compute


def vectors(reference: Any, equations: dict[str, Any]) -> list[dict[str, Any]]:
    compute = _compute(reference)
    out = common.standard_vectors(equations, compute, SOURCE)
    example = common.nkf_2021_example()
    out.append(common.vector(
        "NKF 2021 calculator: man 55 y, Scr 1.2 mg/dL -> 71 (displayed rounded)", "egfr-cr",
        example, "NKF eGFR calculator (CKD-EPI 2021), published worked example",
        expected={"egfr": 71, "stage": "G2"}, rel_tol=0.0, abs_tol=0.5, expect_warnings=[],
    ))
    out.append(common.vector(
        "NKF 2021 example, unrounded", "egfr-cr", example, SOURCE,
        expected=common.expected(compute, "egfr-cr", example), rel_tol=1e-9, expect_warnings=[],
    ))
    out.append(common.vector(
        "NKF 2021 example with creatinine 106.08 umol/L", "egfr-cr",
        {**example, "creatinine": {"value": 106.08, "unit": "umol/L"}},
        "NKF eGFR calculator (CKD-EPI 2021), published worked example; 106.08 umol/L = 1.2 mg/dL",
        expected={"egfr": 71, "stage": "G2"}, rel_tol=0.0, abs_tol=0.5, expect_warnings=[],
    ))
    for function in ("egfr-cr", "egfr-cr-cys"):
        fields: dict[str, Any] = {"age": 50, "sex": "male", "creatinine": 1.0}
        if function == "egfr-cr-cys":
            fields["cystatin_c"] = 1.0
        for black in (True, False):
            out.append(common.vector(
                f"{function}: black={str(black).lower()} sent to the race-free 2021 refit", function,
                {**fields, "black": black}, "input validation (removed input)",
                expect_error=["black"],
            ))
    out.append(common.vector(
        "black sent to the cystatin C equation (never an input)", "egfr-cys",
        {"age": 50, "sex": "male", "cystatin_c": 1.0, "black": True}, "input validation",
        expect_error=["black"],
    ))
    return out


def build(ko_dir: Path) -> dict[str, Any]:
    """Export egfr_cr.onnx, egfr_cys.onnx and egfr_cr_cys.onnx into ``ko_dir``; write tests.json."""
    src = Path(__file__).resolve().parent
    model = common.load_module(src / "model.py")
    reference = common.load_module(src / "reference.py")
    ko_dir = Path(ko_dir)
    for filename, equation in model.EQUATIONS.values():
        common.export(equation, ko_dir / filename)
    tests = vectors(reference, model.EQUATIONS)
    common.write_tests(ko_dir, tests)
    return {"models": [f for f, _ in model.EQUATIONS.values()], "vectors": len(tests)}


if __name__ == "__main__":
    print(build(Path(__file__).resolve().parents[1]))
