"""Independent float64 reference for ckd-epi-egfr 2.0.0, written straight from the papers.

Inker LA et al. NEJM 2021;385:1737-1749 (race-free creatinine and creatinine-cystatin C refits)
and Inker LA et al. NEJM 2012;367:20-29 (cystatin C). Shares no code with src/model.py. Inputs:
age in years, female as bool, Scr in mg/dL, Scys in mg/L; numpy arrays or scalars.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def egfr_cr(age: ArrayLike, female: ArrayLike, scr: ArrayLike) -> NDArray:
    """CKD-EPI 2021 creatinine equation (age factor 0.9938, not the 2009 equation's 0.993)."""
    age, female, scr = (np.asarray(v, dtype=np.float64) for v in (age, female, scr))
    is_f = female > 0.5
    r = scr / np.where(is_f, 0.7, 0.9)
    return (
        142.0
        * np.minimum(r, 1.0) ** np.where(is_f, -0.241, -0.302)
        * np.maximum(r, 1.0) ** -1.200
        * 0.9938**age
        * np.where(is_f, 1.012, 1.0)
    )


def egfr_cys(age: ArrayLike, female: ArrayLike, scys: ArrayLike) -> NDArray:
    """CKD-EPI 2012 cystatin C equation (unchanged in 2021)."""
    age, female, scys = (np.asarray(v, dtype=np.float64) for v in (age, female, scys))
    r = scys / 0.8
    return (
        133.0
        * np.minimum(r, 1.0) ** -0.499
        * np.maximum(r, 1.0) ** -1.328
        * 0.996**age
        * np.where(female > 0.5, 0.932, 1.0)
    )


def egfr_cr_cys(age: ArrayLike, female: ArrayLike, scr: ArrayLike, scys: ArrayLike) -> NDArray:
    """CKD-EPI 2021 creatinine-cystatin C equation."""
    age, female, scr, scys = (np.asarray(v, dtype=np.float64) for v in (age, female, scr, scys))
    is_f = female > 0.5
    r_cr = scr / np.where(is_f, 0.7, 0.9)
    r_cys = scys / 0.8
    return (
        135.0
        * np.minimum(r_cr, 1.0) ** np.where(is_f, -0.219, -0.144)
        * np.maximum(r_cr, 1.0) ** -0.544
        * np.minimum(r_cys, 1.0) ** -0.323
        * np.maximum(r_cys, 1.0) ** -0.778
        * 0.9961**age
        * np.where(is_f, 0.963, 1.0)
    )


def kdigo_stage(egfr: float) -> str:
    """KDIGO 2012 GFR category of an unrounded eGFR in mL/min/1.73 m2."""
    for label, lower in (("G1", 90), ("G2", 60), ("G3a", 45), ("G3b", 30), ("G4", 15)):
        if egfr >= lower:
            return label
    return "G5"
