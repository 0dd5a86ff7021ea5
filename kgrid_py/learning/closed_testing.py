"""Choose the update (``auto``), measure before and after, and correct for optimism by bootstrap.

**Closed testing** (Vergouwe et al., Stat Med 2017;36:4529), over the nested family
original ⊂ recalibration in the large (``intercept``) ⊂ logistic recalibration (``slope``), each
step tested against the most extensive model fitted here (``slope``; revision, which refits every
coefficient, is not offered), at level α; keep the original unless the data reject it, then the
simplest update that fits:

1. original vs slope, 2 df (logistic: likelihood ratio; time to event: Wald of a_h = 0 for every
   horizon and b = 1, H + 1 df, because the Cox partial likelihood is blind to the baseline and the
   Breslow baseline has no parametric likelihood). Not rejected: keep the original.
2. intercept vs slope, 1 df, likelihood ratio (binomial; Cox partial likelihood in b).
   Not rejected: recalibrate in the large; otherwise the slope too.

**Optimism** (Harrell, Lee & Mark 1996): the whole procedure, closed test included, is rerun on
each bootstrap sample; corrected = apparent - mean(on its own sample - on the original data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import chi2

from kgrid_py.learning.recalibration import (
    Evidence,
    Method,
    RecalibrationError,
    Update,
    cloglog,
    fit,
    fit_cox_slope,
    fit_logistic,
)
from kgrid_py.learning.statistics import auc
from kgrid_py.learning.survival import kaplan_meier, step_at

__all__ = ["Choice", "bootstrap_optimism", "choose", "performance"]

ALPHA = 0.05


@dataclass(frozen=True)
class Choice:
    """The chosen update, the fits it was chosen among, the tests, and a sentence saying why."""

    method: Method
    update: Update
    tests: list[dict[str, Any]]
    reason: str


def choose(evidence: Evidence, alpha: float = ALPHA) -> Choice:
    """Closed testing; see the module docstring."""
    intercept, slope = fit(evidence, "intercept"), fit(evidence, "slope")
    original = fit(evidence, "none")
    if evidence.kind == "logistic":
        stat1, df1, kind1 = 2 * (slope.loglik - original.loglik), 2, "likelihood ratio"
    else:
        delta = slope.estimates - np.append(np.zeros(len(slope.names) - 1), 1.0)
        stat1 = float(delta @ np.linalg.solve(slope.covariance, delta))
        df1, kind1 = len(slope.names), "Wald (a_h = 0 for every horizon, b = 1)"
    stat2 = 2 * (slope.loglik - intercept.loglik)
    tests = [
        {
            "step": 1,
            "null": "original",
            "against": "slope",
            "test": kind1,
            "statistic": float(stat1),
            "df": df1,
            "p_value": float(chi2.sf(stat1, df1)),
        },
        {
            "step": 2,
            "null": "intercept",
            "against": "slope",
            "test": "likelihood ratio",
            "statistic": float(stat2),
            "df": 1,
            "p_value": float(chi2.sf(stat2, 1)),
        },
    ]
    if tests[0]["p_value"] >= alpha:
        reason = (
            f"closed test at alpha {alpha}: the data do not reject the original "
            f"({kind1} {stat1:.3g}, {df1} df, p = {tests[0]['p_value']:.3g}); keep it"
        )
        return Choice("none", original, tests[:1], reason)
    if tests[1]["p_value"] >= alpha:
        reason = (
            f"closed test at alpha {alpha}: the original is rejected (p = {tests[0]['p_value']:.3g}); "
            f"recalibration in the large is not (LR {stat2:.3g}, 1 df, p = {tests[1]['p_value']:.3g})"
        )
        return Choice("intercept", intercept, tests, reason)
    reason = (
        f"closed test at alpha {alpha}: the original (p = {tests[0]['p_value']:.3g}) and recalibration "
        f"in the large (p = {tests[1]['p_value']:.3g}) are rejected; the slope is re-estimated too"
    )
    return Choice("slope", slope, tests, reason)


def performance(evidence: Evidence, update: Update | None = None) -> dict[str, float]:
    """Calibration and discrimination of the KO's risks (updated by ``update``) on ``evidence``.

    Logistic: O:E, calibration intercept (offset) and slope, Brier, AUC. Time to event, per horizon:
    O:E with Kaplan-Meier observed risk (competing events censored: the net risk the update
    targets), and the Cox calibration slope on cloglog of the first horizon's risk.
    """
    risks = {o: (update.apply(o, p) if update else p) for o, p in evidence.predicted.items()}
    if evidence.kind == "logistic":
        view = Evidence(evidence.kind, evidence.horizons, risks, evidence.time, evidence.cause, evidence.site)
        offset, y = view.binary()
        p = 1.0 / (1.0 + np.exp(-offset))
        return {
            "oe": float(y.mean() / p.mean()),
            "calibration_intercept": float(fit_logistic(offset, y, "intercept").estimates[0]),
            "calibration_slope": float(fit_logistic(offset, y, "slope").estimates[1]),
            "brier": float(np.mean((y - p) ** 2)),
            "auc": auc(y, p),
        }
    out: dict[str, float] = {}
    times, surv, _ = kaplan_meier(evidence.time, evidence.cause == 1)
    for output in evidence.outputs:
        observed = 1.0 - float(step_at(times, surv, evidence.horizons[output]))
        out[f"oe[{output}]"] = observed / float(np.mean(risks[output]))
    first = evidence.outputs[0]
    strata = np.full(evidence.n, "all")
    out["calibration_slope"] = fit_cox_slope(evidence.time, evidence.cause == 1, cloglog(risks[first]), strata)[0]
    return out


def _procedure(evidence: Evidence, method: str, alpha: float) -> Update:
    return choose(evidence, alpha).update if method == "auto" else fit(evidence, method)  # type: ignore[arg-type]


def bootstrap_optimism(
    evidence: Evidence, method: str, resamples: int = 200, seed: int = 0, alpha: float = ALPHA
) -> dict[str, dict[str, float]]:
    """Apparent, optimism and corrected value of each :func:`performance` measure of the update.

    Resamples that cannot be fitted (no events drawn) are skipped and counted.
    """
    if resamples < 1:
        raise RecalibrationError("the bootstrap needs at least one resample")
    # Rows in time order once: every fit sorts by time, and sorting sorted rows is linear. A
    # resample is then laid out in time order from its row counts (np.repeat), never sorted.
    order = np.argsort(evidence.time, kind="stable")
    evidence = evidence.take(order)
    fitted = _procedure(evidence, method, alpha)
    apparent = performance(evidence, fitted)
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {k: [] for k in apparent}
    skipped = 0
    everyone = np.arange(evidence.n)
    for _ in range(resamples):
        drawn = np.bincount(rng.integers(0, evidence.n, evidence.n), minlength=evidence.n)
        sample = evidence.take(np.repeat(everyone, drawn))
        try:
            refit = _procedure(sample, method, alpha)
            own, original = performance(sample, refit), performance(evidence, refit)
        except RecalibrationError:
            skipped += 1
            continue
        for key in apparent:
            diffs[key].append(own[key] - original[key])
    if skipped == resamples:
        raise RecalibrationError("no bootstrap resample could be fitted")
    out = {}
    for key, value in apparent.items():
        optimism = float(np.mean(diffs[key]))
        out[key] = {"apparent": value, "optimism": optimism, "corrected": value - optimism}
    out["bootstrap"] = {"resamples": float(resamples - skipped), "skipped": float(skipped), "seed": float(seed)}
    return out
