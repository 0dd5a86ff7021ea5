"""kfre 1.0.0: the 4- and 8-variable Kidney Failure Risk Equations as float64 torch modules.

Tangri N et al. JAMA 2011;305:1553-1559 (coefficients, centring means) and JAMA 2016;315:164-174
(baseline survivals; non-North-American recalibration). risk(t) = 1 - S0(t)^exp(LP), computed as
-expm1(exp(LP) * ln S0(t)) so small risks keep full relative precision. ONNX has no Expm1, so
expm1 is Kahan's formula: (u - 1) * x / ln(u) with u = exp(x), exact to a few ulp.
"""

from __future__ import annotations

import math

import torch
from torch import nn

REGIONS = ["north_american", "non_north_american"]  # enum order of the `region` input
SEXES = ["female", "male"]  # enum order of the `sex` input (male = index 1)

# Baseline survival S0(t) by (horizon, region index).
S0_FOUR = {2: (0.9750, 0.9832), 5: (0.9240, 0.9365)}
S0_EIGHT = {2: (0.9780, 0.9827), 5: (0.9301, 0.9245)}

FOUR_INPUTS = ("age", "sex", "egfr", "uacr", "region")
EIGHT_INPUTS = ("age", "sex", "egfr", "uacr", "albumin", "phosphate", "bicarbonate", "calcium",
                "region")
OUTPUTS = ("risk_2y", "risk_5y")


def expm1(x: torch.Tensor) -> torch.Tensor:
    """exp(x) - 1 without cancellation, from ONNX-exportable ops (Kahan)."""
    u = torch.exp(x)
    general = (u - 1.0) * x / torch.log(u)
    out = torch.where(u == 1.0, x, general)
    return torch.where(u == 0.0, torch.full_like(x, -1.0), out)


class _Kfre(nn.Module):
    inputs: tuple[str, ...]
    survival: dict[int, tuple[float, float]]

    def linear_predictor(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, *columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = dict(zip(self.inputs, columns, strict=True))
        hazard = torch.exp(self.linear_predictor(x))
        non_na = x["region"] > 0.5
        risks = []
        for years in (2, 5):
            s0_na, s0_other = self.survival[years]
            log_s0 = torch.where(
                non_na,
                torch.full_like(hazard, math.log(s0_other)),
                torch.full_like(hazard, math.log(s0_na)),
            )
            risks.append(-expm1(hazard * log_s0))
        return risks[0], risks[1]


class FourVariable(_Kfre):
    """4-variable KFRE: age, sex, eGFR, UACR."""

    inputs = FOUR_INPUTS
    survival = S0_FOUR

    def linear_predictor(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return (
            -0.2201 * (x["age"] / 10.0 - 7.036)
            + 0.2467 * (x["sex"] - 0.5642)
            - 0.5567 * (x["egfr"] / 5.0 - 7.222)
            + 0.4510 * (torch.log(x["uacr"]) - 5.137)
        )


class EightVariable(_Kfre):
    """8-variable KFRE: the four above plus albumin, phosphate, bicarbonate, calcium."""

    inputs = EIGHT_INPUTS
    survival = S0_EIGHT

    def linear_predictor(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return (
            -0.1992 * (x["age"] / 10.0 - 7.036)
            + 0.1602 * (x["sex"] - 0.5642)
            - 0.4919 * (x["egfr"] / 5.0 - 7.222)
            + 0.3364 * (torch.log(x["uacr"]) - 5.137)
            - 0.3441 * (x["albumin"] - 3.997)
            + 0.2604 * (x["phosphate"] - 3.916)
            - 0.07354 * (x["bicarbonate"] - 25.57)
            - 0.2228 * (x["calcium"] - 9.355)
        )


# function name -> (ONNX file, module class)
FUNCTIONS: dict[str, tuple[str, type[_Kfre]]] = {
    "four-variable": ("four_variable.onnx", FourVariable),
    "eight-variable": ("eight_variable.onnx", EightVariable),
}
