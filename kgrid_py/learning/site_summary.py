"""A site's aggregate statistics at the plan's parameters: what one hospital sends, never a row.

Every statistic is a sum over the site's patients, so the coordinator's sums over sites are the
pooled ones (learning-loop.md §5):

- **logistic** (``intercept``: θ = (a,); ``slope``: θ = (a, b)): ℓ, gradient and Hessian of the
  binomial log-likelihood at θ (:func:`~kgrid_py.learning.recalibration.logistic_sums`).
- **Cox slope** b on o = cloglog of the first horizon's risk, *stratified by site*: each site's
  partial likelihood has its own risk sets, so the stratified ℓ, score U and information I are
  sums of the sites' (equal to ``PHReg(strata=site, ties="breslow")`` on the pooled rows).
- **Baseline** (a_h per horizon): Breslow's estimator needs the pooled risk set at every event
  time, which a site cannot send without its event times. Instead the updated baseline hazard is
  piecewise constant on a public grid (monthly by default, the horizons among its edges): per
  interval j the site sends its event count D_j and exposure E_hj = Σ_i e^{b·o_h,i}·(days at risk in
  j), and E1_hj = Σ_i o_h,i·e^{b·o_h,i}·(days) for the slope's share of the standard error. The
  pooled maximum likelihood is closed form, λ_hj = ΣD_j/ΣE_hj (a Poisson GLM with offset ln E), and
  a_h = ln Σ_{e_j <= h} λ_hj·Δ_j. Its gap to the pooled Breslow a_h is measured in the tests
  (about 1e-4 on a monthly grid); the size is 1 + 2H numbers per interval whatever the site's n.

Follow-up past the last horizon is cut at it; competing events are censored (the net risk the
KO's Cox form predicts, as in single-site recalibration).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from kgrid_py.learning.recalibration import (
    Evidence,
    RecalibrationError,
    cloglog,
    cox_partial,
    logistic_sums,
)

__all__ = ["BelowMinimum", "counts", "cox_statistics", "grid_edges", "logistic_statistics", "pwe_statistics"]

MONTH_DAYS = 365.25 / 12


class BelowMinimum(RecalibrationError):
    """The site has fewer patients or events than the plan's minimums: it sends nothing."""


def grid_edges(horizons: dict[str, float], width: float = MONTH_DAYS) -> list[float]:
    """0, width, 2·width, ... up to the longest horizon, with every horizon an edge."""
    if not width > 0:
        raise RecalibrationError(f"grid width must be > 0 days, not {width!r}")
    top = max(horizons.values())
    steps = int(np.floor(top / width))
    if steps > 2000:
        raise RecalibrationError(f"a {width:g}-day grid to {top:g} days has {steps} intervals; at most 2000")
    edges = {0.0, *(k * width for k in range(1, steps + 1)), *map(float, horizons.values())}
    return sorted(e for e in edges if e <= top)


def counts(evidence: Evidence, minimum: dict[str, int]) -> dict[str, int]:
    """n, events and the rest; raises :class:`BelowMinimum` below ``minimum`` (patients, events)."""
    if evidence.kind == "logistic":
        _, y = evidence.binary()
        out = {"n": len(y), "events": int(y.sum()), "non_events": int(len(y) - y.sum())}
        short = out["events"] < minimum["events"] or out["non_events"] < minimum["events"]
    else:
        out = {
            "n": evidence.n,
            "events": int(np.sum(evidence.cause == 1)),
            "competing_events": int(np.sum(evidence.cause == 2)),
            "censored": int(np.sum(evidence.cause == 0)),
        }
        short = out["events"] < minimum["events"]
    if out["n"] < minimum["patients"] or short:
        raise BelowMinimum(
            f"{out['n']} patients and {out['events']} events"
            + (f" ({out['non_events']} non-events)" if "non_events" in out else "")
            + f": the plan needs at least {minimum['patients']} patients and {minimum['events']} events"
            + (" and non-events" if "non_events" in out else "")
            + "; this site sends nothing"
        )
    return out


def logistic_statistics(evidence: Evidence, method: str, theta: list[float]) -> dict[str, Any]:
    offset, y = evidence.binary()
    loglik, gradient, hessian = logistic_sums(offset, y, theta, method)  # type: ignore[arg-type]
    return {"loglik": loglik, "gradient": gradient.tolist(), "hessian": hessian.tolist()}


def cox_statistics(evidence: Evidence, b: float) -> dict[str, Any]:
    """The site's own partial likelihood (its stratum) in b, at b."""
    x = cloglog(evidence.predicted[evidence.outputs[0]])
    loglik, score, information = cox_partial(
        evidence.time, evidence.cause == 1, x, np.full(evidence.n, "site"), float(b)
    )
    return {"loglik": loglik, "gradient": [score], "hessian": [[-information]]}


def pwe_statistics(evidence: Evidence, b: float, edges: list[float]) -> dict[str, Any]:
    """Per grid interval: events, and per horizon output the exposure sums E and E1 (see module)."""
    grid = np.asarray(edges, dtype=np.float64)
    if grid[0] != 0.0 or np.any(np.diff(grid) <= 0):
        raise RecalibrationError("the grid must start at 0 and increase")
    intervals = len(grid) - 1
    t = np.minimum(evidence.time, grid[-1])
    # Interval of each time: e_{j} < t <= e_{j+1} (a time of 0 falls in the first).
    where = np.clip(np.searchsorted(grid, t, side="left") - 1, 0, intervals - 1)
    event = (evidence.cause == 1) & (evidence.time <= grid[-1])
    deaths = np.bincount(where[event], minlength=intervals).astype(np.float64)
    partial = t - grid[where]  # days at risk within its own interval
    widths = np.diff(grid)
    out: dict[str, Any] = {"events": deaths.tolist(), "exposure": {}, "exposure_x": {}}
    for output in evidence.outputs:
        x = cloglog(evidence.predicted[output])
        w = np.exp(b * x)
        out["exposure"][output] = _exposure(where, partial, w, widths).tolist()
        out["exposure_x"][output] = _exposure(where, partial, x * w, widths).tolist()
    return out


def _exposure(
    where: NDArray[np.int64], partial: NDArray[np.float64], w: NDArray[np.float64], widths: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Σ_i w_i·(days of row i in interval j): full widths before a row's interval, the rest in it."""
    n_int = len(widths)
    mass = np.bincount(where, weights=w, minlength=n_int)
    beyond = np.concatenate([np.cumsum(mass[::-1])[::-1][1:], [0.0]])  # Σ w over rows past interval j
    return beyond * widths + np.bincount(where, weights=w * partial, minlength=n_int)
