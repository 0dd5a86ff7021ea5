"""Independent float64 reference for ckd-epi-egfr 1.0.0, written straight from the papers.

Levey AS et al. Ann Intern Med 2009;150:604-612 (creatinine, continuous form with 141 and
x1.018 for women) and Inker LA et al. NEJM 2012;367:20-29 (cystatin C, creatinine-cystatin C).
Shares no code with src/model.py. Inputs: age in years, female as bool, Scr in mg/dL, Scys in
mg/L, black as bool; numpy arrays or scalars.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def egfr_cr(age: ArrayLike, female: ArrayLike, scr: ArrayLike, black: ArrayLike) -> NDArray:
    """CKD-EPI 2009 creatinine equation."""
    age, female, scr, black = (np.asarray(v, dtype=np.float64) for v in (age, female, scr, black))
    is_f = female > 0.5
    kappa = np.where(is_f, 0.7, 0.9)
    alpha = np.where(is_f, -0.329, -0.411)
    r = scr / kappa
    return (
        141.0
        * np.minimum(r, 1.0) ** alpha
        * np.maximum(r, 1.0) ** -1.209
        * 0.993**age
        * np.where(is_f, 1.018, 1.0)
        * np.where(black > 0.5, 1.159, 1.0)
    )


def egfr_cys(age: ArrayLike, female: ArrayLike, scys: ArrayLike) -> NDArray:
    """CKD-EPI 2012 cystatin C equation (no race term)."""
    age, female, scys = (np.asarray(v, dtype=np.float64) for v in (age, female, scys))
    r = scys / 0.8
    return (
        133.0
        * np.minimum(r, 1.0) ** -0.499
        * np.maximum(r, 1.0) ** -1.328
        * 0.996**age
        * np.where(female > 0.5, 0.932, 1.0)
    )


def egfr_cr_cys(
    age: ArrayLike, female: ArrayLike, scr: ArrayLike, scys: ArrayLike, black: ArrayLike
) -> NDArray:
    """CKD-EPI 2012 creatinine-cystatin C equation."""
    age, female, scr, scys, black = (
        np.asarray(v, dtype=np.float64) for v in (age, female, scr, scys, black)
    )
    is_f = female > 0.5
    r_cr = scr / np.where(is_f, 0.7, 0.9)
    r_cys = scys / 0.8
    return (
        135.0
        * np.minimum(r_cr, 1.0) ** np.where(is_f, -0.248, -0.207)
        * np.maximum(r_cr, 1.0) ** -0.601
        * np.minimum(r_cys, 1.0) ** -0.375
        * np.maximum(r_cys, 1.0) ** -0.711
        * 0.995**age
        * np.where(is_f, 0.969, 1.0)
        * np.where(black > 0.5, 1.08, 1.0)
    )


def kdigo_stage(egfr: float) -> str:
    """KDIGO 2012 GFR category of an unrounded eGFR in mL/min/1.73 m2."""
    for label, lower in (("G1", 90), ("G2", 60), ("G3a", 45), ("G3b", 30), ("G4", 15)):
        if egfr >= lower:
            return label
    return "G5"
