"""ckd-epi-egfr 1.0.0: the 2009 creatinine and 2012 cystatin C / creatinine-cystatin equations.

Coefficients from Levey 2009 (doi:10.7326/0003-4819-150-9-200905050-00006) and Inker 2012
(doi:10.1056/NEJMoa1114248), in their continuous form (141 x 1.018 for women, not the rounded
144 of the 2009 paper's Table 2). The torch module is the shared ``CkdEpi`` of
``src/ckd_epi_common.py`` (each version carries its own copy, so a packed KO rebuilds on its own).
"""

from __future__ import annotations

from ckd_epi_common import CkdEpi, Equation, Knot

CREATININE_2009 = Knot(kappa_female=0.7, kappa_male=0.9, alpha_female=-0.329, alpha_male=-0.411,
                       beta=-1.209)
CYSTATIN_2012 = Knot(kappa_female=0.8, kappa_male=0.8, alpha_female=-0.499, alpha_male=-0.499,
                     beta=-1.328)
CREATININE_2012_CR_CYS = Knot(kappa_female=0.7, kappa_male=0.9, alpha_female=-0.248,
                              alpha_male=-0.207, beta=-0.601)
CYSTATIN_2012_CR_CYS = Knot(kappa_female=0.8, kappa_male=0.8, alpha_female=-0.375,
                            alpha_male=-0.375, beta=-0.711)

# function name -> (ONNX file, equation)
EQUATIONS: dict[str, tuple[str, Equation]] = {
    "egfr-cr": ("egfr_cr.onnx", Equation(
        name="CKD-EPI 2009 creatinine",
        inputs=("age", "sex", "creatinine", "black"),
        base=141.0, age_factor=0.993, female_factor=1.018,
        creatinine=CREATININE_2009, black_factor=1.159,
    )),
    "egfr-cys": ("egfr_cys.onnx", Equation(
        name="CKD-EPI 2012 cystatin C",
        inputs=("age", "sex", "cystatin_c"),
        base=133.0, age_factor=0.996, female_factor=0.932,
        cystatin=CYSTATIN_2012,
    )),
    "egfr-cr-cys": ("egfr_cr_cys.onnx", Equation(
        name="CKD-EPI 2012 creatinine-cystatin C",
        inputs=("age", "sex", "creatinine", "cystatin_c", "black"),
        base=135.0, age_factor=0.995, female_factor=0.969,
        creatinine=CREATININE_2012_CR_CYS, cystatin=CYSTATIN_2012_CR_CYS, black_factor=1.08,
    )),
}


def module(function: str) -> CkdEpi:
    """The torch module of one function."""
    return CkdEpi(EQUATIONS[function][1])
