"""plcom2012 1.0.0: the PLCOm2012 six-year lung-cancer risk model as a float64 torch module.

Tammemagi MC et al. NEJM 2013;368:728-736. risk_6y = expit(logit); screening_recommended is
risk_6y >= threshold (default 0.0151, Tammemagi 2014). Enum inputs arrive as indices into the
lists below (the order of the `enum` lists in metadata.json).
"""

from __future__ import annotations

import torch
from torch import nn

RACES = [
    "white",
    "black",
    "hispanic",
    "asian",
    "american_indian_alaska_native",
    "native_hawaiian_pacific_islander",
]
# Race/ethnicity terms, in RACES order. American Indian/Alaska Native shares White's 0 and
# Native Hawaiian/Pacific Islander has +1.027152, as in most implementations; NCI's lcmodels
# swaps these two (see the model card).
RACE_TERMS = [0.0, 0.3944778, -0.7434744, -0.466585, 0.0, 1.027152]
SMOKING_STATUSES = ["current", "former"]

INPUTS = (
    "age",
    "race",
    "education",
    "bmi",
    "copd",
    "personal_cancer_history",
    "family_lung_cancer_history",
    "smoking_status",
    "cigarettes_per_day",
    "smoking_years",
    "years_since_quit",
    "threshold",
)
OUTPUTS = ("risk_6y", "screening_recommended")


class PLCOm2012(nn.Module):
    """6-year lung-cancer risk of an ever-smoker, and whether it reaches the threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("race_terms", torch.tensor(RACE_TERMS, dtype=torch.float64))

    def forward(self, *columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = dict(zip(INPUTS, columns, strict=True))
        current = (x["smoking_status"] < 0.5).to(torch.float64)  # index 0 = current
        race = self.race_terms[torch.round(x["race"]).to(torch.int64)]
        logit = (
            -4.532506
            + 0.0778868 * (x["age"] - 62.0)
            + race
            - 0.0812744 * (x["education"] - 4.0)
            - 0.0274194 * (x["bmi"] - 27.0)
            + 0.3553063 * x["copd"]
            + 0.4589971 * x["personal_cancer_history"]
            + 0.587185 * x["family_lung_cancer_history"]
            + 0.2597431 * current
            - 1.822606 * (10.0 / x["cigarettes_per_day"] - 0.4021541613)
            + 0.0317321 * (x["smoking_years"] - 27.0)
            - 0.0308572 * (x["years_since_quit"] - 10.0)
        )
        # Not torch.sigmoid: ONNX Runtime's float64 Sigmoid kernel loses precision for very
        # negative logits (1e-12 relative at -10, 1e-3 at -30); Exp is exact to an ulp.
        risk = 1.0 / (1.0 + torch.exp(-logit))
        return risk, risk >= x["threshold"]


FUNCTIONS = {"risk": ("risk.onnx", PLCOm2012)}
