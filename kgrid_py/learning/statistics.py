"""Calibration and discrimination of predicted probabilities against observed outcomes, on arrays.

Binary outcomes (an event within a fixed horizon, all subjects followed to it) and continuous ones
(a predicted value against a measured one). Time-to-event metrics, which must handle censoring,
are in :mod:`kgrid_py.learning.survival`. Every function here is vectorised numpy: monitoring
a million calls must not loop in Python. Formulas and references: docs in
``/work/shared/references/learning-loop.md`` §2 (Debray 2017 O:E; Austin & Steyerberg 2019 ICI).

A metric computed on too few events is :data:`INSUFFICIENT`, never a number: below
:data:`MIN_EVENTS` events (or non-events) the estimate is noise that looks like a finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit, logit

__all__ = [
    "INSUFFICIENT",
    "MIN_EVENTS",
    "Metric",
    "auc",
    "binary_metrics",
    "continuous_metrics",
    "logistic_fit",
    "rcs_basis",
]

MIN_EVENTS = 10
INSUFFICIENT = "insufficient data"
Z95 = 1.959963984540054
_EPS = 1e-12

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Metric:
    """One reported number with its 95% interval, or the reason there is none."""

    value: float | None
    low: float | None = None
    high: float | None = None
    status: str = "ok"

    @classmethod
    def insufficient(cls) -> Metric:
        return cls(None, status=INSUFFICIENT)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.value is not None and bool(np.isfinite(self.value))

    def to_json(self) -> dict[str, Any]:
        if not self.ok:
            return {"status": self.status if self.status != "ok" else "not estimable"}
        out: dict[str, Any] = {"value": float(self.value)}  # type: ignore[arg-type]
        if self.low is not None and self.high is not None:
            out["ci95"] = [float(self.low), float(self.high)]
        return out


def _clip(p: ArrayLike) -> Array:
    return np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)


def rcs_basis(x: ArrayLike, knots: ArrayLike) -> Array:
    """Restricted cubic spline terms of ``x`` (Harrell's parameterisation, without the linear term).

    With k knots this gives k-2 columns; the same basis R's ``rms::rcs`` and the Giardiello
    companion code use, scaled by (t_k - t_1)^2 so the coefficients stay moderate.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(knots, dtype=np.float64)
    k = len(t)
    scale = (t[-1] - t[0]) ** 2

    def cube(v: Array) -> Array:
        return np.maximum(v, 0.0) ** 3

    cols = []
    for j in range(k - 2):
        term = (
            cube(x - t[j])
            - cube(x - t[k - 2]) * (t[k - 1] - t[j]) / (t[k - 1] - t[k - 2])
            + cube(x - t[k - 1]) * (t[k - 2] - t[j]) / (t[k - 1] - t[k - 2])
        )
        cols.append(term / scale)
    return np.column_stack(cols)


def logistic_fit(
    y: ArrayLike, x: ArrayLike, offset: ArrayLike | None = None, max_iter: int = 100
) -> tuple[Array, Array]:
    """Maximum-likelihood logistic regression (Newton with step-halving): coefficients, covariance.

    ``x`` is the design matrix with its intercept column. Step-halving on the log-likelihood keeps
    plain Newton from diverging on badly miscalibrated data (learning-loop.md §5).
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if x.shape[0] != y.shape[0]:
        x = x.T
    off = np.zeros_like(y) if offset is None else np.asarray(offset, dtype=np.float64)
    beta = np.zeros(x.shape[1])

    def loglik(b: Array) -> float:
        eta = off + x @ b
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    current = loglik(beta)
    info = np.eye(x.shape[1])
    for _ in range(max_iter):
        p = expit(off + x @ beta)
        grad = x.T @ (y - p)
        info = (x * (p * (1 - p))[:, None]).T @ x
        step = np.linalg.solve(info, grad)
        if np.max(np.abs(step)) < 1e-10:
            break
        # halve only on a real decrease, not on the rounding of a sum over many rows
        size, floor = 1.0, current - 1e-10 * max(1.0, abs(current))
        while True:
            trial = beta + size * step
            value = loglik(trial)
            if value >= floor or size < 1e-6:
                break
            size /= 2
        beta, current = trial, value
    p = expit(off + x @ beta)
    info = (x * (p * (1 - p))[:, None]).T @ x
    return beta, np.linalg.inv(info)


def auc(y: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half), O(n log n)."""
    from scipy.stats import rankdata  # here, not at the top: scipy.stats costs ~1 s to import (monitor workers)

    y = np.asarray(y, dtype=bool)
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    n1 = int(y.sum())
    n0 = y.size - n1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def smoothed_calibration(p: ArrayLike, y: ArrayLike, grid: ArrayLike | None = None) -> dict[str, Array]:
    """Observed risk as a smooth function of predicted risk: logistic regression on a restricted
    cubic spline of logit(p) with knots at its 10th, 50th and 90th centiles (Austin & Steyerberg
    2019's parametric alternative to loess; deterministic and O(n)).

    Returns ``fitted`` (p-tilde for each row) and, on ``grid``, the curve with a pointwise 95% band
    (delta method on the logit scale).
    """
    p = _clip(p)
    lp = logit(p)
    knots = np.quantile(lp, [0.1, 0.5, 0.9])
    design = np.column_stack([np.ones_like(lp), lp, rcs_basis(lp, knots)])
    beta, cov = logistic_fit(y, design)
    fitted = expit(design @ beta)
    grid = np.quantile(p, np.linspace(0.01, 0.99, 50)) if grid is None else np.asarray(grid, dtype=np.float64)
    glp = logit(_clip(grid))
    gdesign = np.column_stack([np.ones_like(glp), glp, rcs_basis(glp, knots)])
    eta = gdesign @ beta
    se = np.sqrt(np.einsum("ij,jk,ik->i", gdesign, cov, gdesign))
    return {
        "fitted": fitted,
        "grid": grid,
        "observed": expit(eta),
        "low": expit(eta - Z95 * se),
        "high": expit(eta + Z95 * se),
    }


def error_summary(observed: Array, predicted: Array) -> dict[str, Metric]:
    """ICI, E50 and E90: mean, median and 90th centile of |smoothed observed - predicted|."""
    diff = np.abs(observed - predicted)
    return {
        "ici": Metric(float(diff.mean())),
        "e50": Metric(float(np.median(diff))),
        "e90": Metric(float(np.quantile(diff, 0.9))),
    }


def enough(events: int, non_events: int) -> bool:
    return events >= MIN_EVENTS and non_events >= MIN_EVENTS


def binary_metrics(y: ArrayLike, p: ArrayLike) -> dict[str, Any]:
    """Every binary-outcome metric for outcomes ``y`` (0/1) and predicted probabilities ``p``.

    O:E with Debray's CI, calibration intercept (offset logit p) and slope (logit p as the only
    covariate), ICI/E50/E90, Brier and AUC; each :data:`INSUFFICIENT` below :data:`MIN_EVENTS`.
    """
    y = np.asarray(y, dtype=np.float64)
    p = _clip(p)
    n, events = int(y.size), int(y.sum())
    out: dict[str, Any] = {"n": n, "events": events, "observed_risk": float(y.mean()) if n else None}
    out["expected_risk"] = float(p.mean()) if n else None
    names = ("observed_expected", "calibration_intercept", "calibration_slope", "ici", "e50", "e90", "brier", "auc")
    if not enough(events, n - events):
        out.update({name: Metric.insufficient() for name in names})
        out["curve"] = None
        return out
    oe = events / p.sum()
    se = np.sqrt((1 - events / n) / events)
    out["observed_expected"] = Metric(oe, oe * np.exp(-Z95 * se), oe * np.exp(Z95 * se))
    lp = logit(p)
    ones = np.ones((n, 1))
    (a,), cov_a = logistic_fit(y, ones, offset=lp)
    sa = np.sqrt(cov_a[0, 0])
    out["calibration_intercept"] = Metric(float(a), float(a - Z95 * sa), float(a + Z95 * sa))
    ab, cov_ab = logistic_fit(y, np.column_stack([ones, lp]))
    sb = np.sqrt(cov_ab[1, 1])
    out["calibration_slope"] = Metric(float(ab[1]), float(ab[1] - Z95 * sb), float(ab[1] + Z95 * sb))
    curve = smoothed_calibration(p, y)
    out.update(error_summary(curve.pop("fitted"), p))
    out["curve"] = curve
    out["brier"] = Metric(float(np.mean((y - p) ** 2)))
    out["auc"] = Metric(auc(y, p))
    return out


def continuous_metrics(measured: ArrayLike, predicted: ArrayLike) -> dict[str, Any]:
    """Agreement of a predicted value with a measured one (eGFR against measured GFR).

    bias = median(measured - predicted) (Levey 2009's sign), its IQR, P30 (share within 30% of
    the measured value) and RMSE on the raw scale; :data:`INSUFFICIENT` below :data:`MIN_EVENTS` pairs.
    """
    m = np.asarray(measured, dtype=np.float64)
    e = np.asarray(predicted, dtype=np.float64)
    n = int(m.size)
    out: dict[str, Any] = {"n": n}
    if n < MIN_EVENTS:
        out.update({k: Metric.insufficient() for k in ("bias", "iqr", "p30", "rmse")})
        return out
    d = m - e
    q1, q3 = np.quantile(d, [0.25, 0.75])
    p30 = float(np.mean(np.abs(e - m) <= 0.3 * m))
    se = np.sqrt(p30 * (1 - p30) / n)
    out["bias"] = Metric(float(np.median(d)))
    out["iqr"] = Metric(float(q3 - q1))
    out["p30"] = Metric(p30, max(0.0, p30 - Z95 * se), min(1.0, p30 + Z95 * se))
    out["rmse"] = Metric(float(np.sqrt(np.mean(d**2))))
    return out
