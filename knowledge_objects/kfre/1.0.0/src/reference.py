"""Independent float64 reference for kfre 1.0.0, written straight from the papers.

Tangri N et al. JAMA 2011;305(15):1553-1559 (4- and 8-variable equations) and Tangri N et al.
JAMA 2016;315(2):164-174 (2- and 5-year baseline survivals, North American and recalibrated
non-North-American). Shares no code with src/model.py.

risk(t) = 1 - S0(t) ** exp(LP). It is evaluated here as -expm1(exp(LP) * log(S0)), the same
number without the cancellation of 1 - (something close to 1); ``naive=True`` gives the
textbook form.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

BASELINE_SURVIVAL = {
    # (variables, years, north_american) -> S0
    (4, 2, True): 0.9750, (4, 2, False): 0.9832,
    (4, 5, True): 0.9240, (4, 5, False): 0.9365,
    (8, 2, True): 0.9780, (8, 2, False): 0.9827,
    (8, 5, True): 0.9301, (8, 5, False): 0.9245,  # 0.9245: see the model card
}


def lp_four(age: ArrayLike, male: ArrayLike, egfr: ArrayLike, uacr: ArrayLike) -> NDArray:
    """4-variable linear predictor; UACR in mg/g."""
    age, male, egfr, uacr = (np.asarray(v, dtype=np.float64) for v in (age, male, egfr, uacr))
    return (
        -0.2201 * (age / 10 - 7.036)
        + 0.2467 * (male - 0.5642)
        - 0.5567 * (egfr / 5 - 7.222)
        + 0.4510 * (np.log(uacr) - 5.137)
    )


def lp_eight(
    age: ArrayLike, male: ArrayLike, egfr: ArrayLike, uacr: ArrayLike, albumin: ArrayLike,
    phosphate: ArrayLike, bicarbonate: ArrayLike, calcium: ArrayLike,
) -> NDArray:
    """8-variable linear predictor; albumin g/dL, phosphate mg/dL, bicarbonate mmol/L, calcium mg/dL."""
    age, male, egfr, uacr, alb, phos, bicarb, ca = (
        np.asarray(v, dtype=np.float64)
        for v in (age, male, egfr, uacr, albumin, phosphate, bicarbonate, calcium)
    )
    return (
        -0.1992 * (age / 10 - 7.036)
        + 0.1602 * (male - 0.5642)
        - 0.4919 * (egfr / 5 - 7.222)
        + 0.3364 * (np.log(uacr) - 5.137)
        - 0.3441 * (alb - 3.997)
        + 0.2604 * (phos - 3.916)
        - 0.07354 * (bicarb - 25.57)
        - 0.2228 * (ca - 9.355)
    )


def risk(lp: ArrayLike, variables: int, years: int, north_american: bool,
         naive: bool = False) -> NDArray:
    """Probability of kidney failure within ``years`` (2 or 5) from a linear predictor."""
    s0 = BASELINE_SURVIVAL[(variables, years, bool(north_american))]
    lp = np.asarray(lp, dtype=np.float64)
    if naive:
        return 1.0 - s0 ** np.exp(lp)
    return -np.expm1(np.exp(lp) * np.log(s0))
