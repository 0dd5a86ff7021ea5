"""Build ckd-epi-egfr 1.0.0: export the three ONNX graphs and write tests.json.

``kgrid build`` imports this file and calls :func:`build`. Expected values in the test vectors
come from src/reference.py (written from the papers), never from the torch module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_COMMON = Path(__file__).resolve().parent  # the KO carries its own copy: packs stay self-contained
if str(_COMMON) not in sys.path:
    sys.path.insert(0, str(_COMMON))

import ckd_epi_common as common  # noqa: E402

SOURCE = "src/reference.py (Levey 2009, Inker 2012; float64)"


def _compute(reference: Any) -> common.Compute:
    def compute(function: str, age: float, female: bool, scr: float, scys: float,
                black: bool) -> float:
        if function == "egfr-cr":
            return float(reference.egfr_cr(age, female, scr, black))
        if function == "egfr-cys":
            return float(reference.egfr_cys(age, female, scys))
        return float(reference.egfr_cr_cys(age, female, scr, scys, black))

    return compute


def vectors(reference: Any, equations: dict[str, Any]) -> list[dict[str, Any]]:
    compute = _compute(reference)
    out = common.standard_vectors(equations, compute, SOURCE)
    for function in ("egfr-cr", "egfr-cr-cys"):
        fields: dict[str, Any] = {"age": 50, "sex": "female", "creatinine": 1.0}
        if function == "egfr-cr-cys":
            fields["cystatin_c"] = 1.0
        out.append(common.vector(
            f"{function}: black omitted defaults to false", function, fields, SOURCE,
            expected=common.expected(compute, function, fields), rel_tol=1e-9, expect_warnings=[],
        ))
        out.append(common.vector(
            f"{function}: black given as a string", function, {**fields, "black": "yes"}, "input validation",
            expect_error=["black"],
        ))
    # The 2009 equation for the NKF 2021 example patient (compare 2.0.0's 71.4).
    example = common.nkf_2021_example()
    out.append(common.vector(
        "NKF example patient under the 2009 equation (non-Black)", "egfr-cr",
        {**example, "black": False}, SOURCE,
        expected=common.expected(compute, "egfr-cr", example), rel_tol=1e-9, expect_warnings=[],
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
