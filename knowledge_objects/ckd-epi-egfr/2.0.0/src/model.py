"""ckd-epi-egfr 2.0.0: the 2021 race-free refits and the 2012 cystatin C equation.

Coefficients from Inker 2021 (doi:10.1056/NEJMoa2102953) and, for cystatin C alone, Inker 2012
(doi:10.1056/NEJMoa1114248). No race term. The torch module is the shared ``CkdEpi`` of
``src/ckd_epi_common.py`` (each version carries its own copy, so a packed KO rebuilds on its own).
"""

from __future__ import annotations

from ckd_epi_common import CkdEpi, Equation, Knot

CREATININE_2021 = Knot(kappa_female=0.7, kappa_male=0.9, alpha_female=-0.241, alpha_male=-0.302,
                       beta=-1.200)
CYSTATIN_2012 = Knot(kappa_female=0.8, kappa_male=0.8, alpha_female=-0.499, alpha_male=-0.499,
                     beta=-1.328)
CREATININE_2021_CR_CYS = Knot(kappa_female=0.7, kappa_male=0.9, alpha_female=-0.219,
                              alpha_male=-0.144, beta=-0.544)
CYSTATIN_2021_CR_CYS = Knot(kappa_female=0.8, kappa_male=0.8, alpha_female=-0.323,
                            alpha_male=-0.323, beta=-0.778)

# function name -> (ONNX file, equation)
EQUATIONS: dict[str, tuple[str, Equation]] = {
    "egfr-cr": ("egfr_cr.onnx", Equation(
        name="CKD-EPI 2021 creatinine (race-free)",
        inputs=("age", "sex", "creatinine"),
        base=142.0, age_factor=0.9938, female_factor=1.012,
        creatinine=CREATININE_2021,
    )),
    "egfr-cys": ("egfr_cys.onnx", Equation(
        name="CKD-EPI 2012 cystatin C",
        inputs=("age", "sex", "cystatin_c"),
        base=133.0, age_factor=0.996, female_factor=0.932,
        cystatin=CYSTATIN_2012,
    )),
    "egfr-cr-cys": ("egfr_cr_cys.onnx", Equation(
        name="CKD-EPI 2021 creatinine-cystatin C (race-free)",
        inputs=("age", "sex", "creatinine", "cystatin_c"),
        base=135.0, age_factor=0.9961, female_factor=0.963,
        creatinine=CREATININE_2021_CR_CYS, cystatin=CYSTATIN_2021_CR_CYS,
    )),
}


def module(function: str) -> CkdEpi:
    """The torch module of one function."""
    return CkdEpi(EQUATIONS[function][1])
