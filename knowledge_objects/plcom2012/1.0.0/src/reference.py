"""Independent float64 reference for plcom2012 1.0.0, written straight from the paper.

Tammemagi MC et al. Selection criteria for lung-cancer screening. NEJM 2013;368:728-736
(PLCOm2012, supplementary appendix coefficients). Shares no code with src/model.py.
"""

from __future__ import annotations

import math

RACE = {
    "white": 0.0,
    "black": 0.3944778,
    "hispanic": -0.7434744,
    "asian": -0.466585,
    "american_indian_alaska_native": 0.0,
    "native_hawaiian_pacific_islander": 1.027152,
}


def logit(
    age: float,
    race: str,
    education: int,
    bmi: float,
    copd: bool,
    personal_cancer_history: bool,
    family_lung_cancer_history: bool,
    current_smoker: bool,
    cigarettes_per_day: float,
    smoking_years: float,
    years_since_quit: float,
) -> float:
    """The PLCOm2012 linear predictor (log-odds of lung cancer within 6 years)."""
    return (
        -4.532506
        + 0.0778868 * (age - 62)
        + RACE[race]
        - 0.0812744 * (education - 4)
        - 0.0274194 * (bmi - 27)
        + 0.3553063 * float(copd)
        + 0.4589971 * float(personal_cancer_history)
        + 0.587185 * float(family_lung_cancer_history)
        + 0.2597431 * float(current_smoker)
        - 1.822606 * (10 / cigarettes_per_day - 0.4021541613)
        + 0.0317321 * (smoking_years - 27)
        - 0.0308572 * (years_since_quit - 10)
    )


def risk_6y(**kwargs: float | str | bool) -> float:
    """Six-year probability of lung cancer: expit of :func:`logit`."""
    return 1.0 / (1.0 + math.exp(-logit(**kwargs)))  # type: ignore[arg-type]
