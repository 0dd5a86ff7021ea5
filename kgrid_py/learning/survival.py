"""Time-to-event validation with censoring and competing events, vectorised numpy.

Observed risk by Kaplan-Meier (net risk: competing events count as censored) or Aalen-Johansen
(crude cumulative incidence, when the KO declares a competing event); O:E(t) with
O:E·exp(±1.96/√O) (McLernon 2023); calibration intercept at t (solve mean[1-exp(-e^a H_i)] = observed);
calibration slope (Cox coefficient of cloglog p̂(t), Breslow ties); ICI/E50/E90 from a Cox model on
a restricted cubic spline of cloglog p̂(t) (Austin, Harrell & van Klaveren 2020); IPCW Brier (Graf
1999); Uno's C truncated at t; cumulative/dynamic AUC(t). The censoring distribution Ĝ is the
reverse Kaplan-Meier exactly as scikit-survival computes it, so each metric can be checked against
that library on the same rows. Times are in days; the horizon is a number of days.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import brentq

from kgrid_py.learning.statistics import Z95, Metric, enough, error_summary, rcs_basis

__all__ = [
    "aalen_johansen",
    "censoring_survival",
    "cox_fit",
    "cumulative_dynamic_auc",
    "ipcw_brier",
    "kaplan_meier",
    "step_at",
    "time_to_event_metrics",
    "uno_c",
]

Array = NDArray[np.float64]
_EPS = 1e-12


def _counts(time: Array, codes: NDArray[np.int64]) -> tuple[Array, NDArray[np.int64], NDArray[np.int64]]:
    """Unique times, the count of each code (0 censored, 1 event, 2 competing) there, and at risk just before."""
    uniq, inverse = np.unique(time, return_inverse=True)
    counts = np.zeros((uniq.size, 3), dtype=np.int64)
    np.add.at(counts, (inverse, np.clip(codes, 0, 2)), 1)
    total = counts.sum(axis=1)
    at_risk = time.size - np.concatenate([[0], np.cumsum(total)[:-1]])
    return uniq, counts, at_risk


def step_at(times: Array, values: Array, t: float | Array, before: float = 1.0) -> Any:
    """A right-continuous step function's value at ``t`` (``before`` ahead of its first step)."""
    idx = np.searchsorted(times, t, side="right") - 1
    padded = np.concatenate([[before], values])
    return padded[np.asarray(idx) + 1]


def kaplan_meier(time: ArrayLike, event: ArrayLike) -> tuple[Array, Array, Array]:
    """Kaplan-Meier survival at each unique time, and Greenwood's variance sum Σ d/(n(n-d))."""
    t = np.asarray(time, dtype=np.float64)
    codes = (np.asarray(event) == 1).astype(np.int64)
    uniq, counts, at_risk = _counts(t, codes)
    d = counts[:, 1].astype(np.float64)
    n = at_risk.astype(np.float64)
    surv = np.cumprod(1.0 - d / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        green = np.cumsum(np.where(n > d, d / (n * (n - d)), 0.0))
    return uniq, surv, green


def aalen_johansen(time: ArrayLike, cause: ArrayLike) -> tuple[Array, Array]:
    """Cumulative incidence of cause 1 with cause 2 competing (0 = censored), at each unique time."""
    t = np.asarray(time, dtype=np.float64)
    codes = np.asarray(cause, dtype=np.int64)
    uniq, counts, at_risk = _counts(t, codes)
    n = at_risk.astype(np.float64)
    any_event = (counts[:, 1] + counts[:, 2]).astype(np.float64)
    surv_any = np.cumprod(1.0 - any_event / n)
    surv_before = np.concatenate([[1.0], surv_any[:-1]])
    return uniq, np.cumsum(surv_before * counts[:, 1] / n)


def censoring_survival(time: ArrayLike, event: ArrayLike) -> tuple[Array, Array]:
    """Ĝ, the reverse Kaplan-Meier of censoring: at tied times events leave the risk set first."""
    t = np.asarray(time, dtype=np.float64)
    codes = (np.asarray(event) == 1).astype(np.int64)
    uniq, counts, at_risk = _counts(t, codes)
    censored = counts[:, 0].astype(np.float64)
    n = (at_risk - counts[:, 1]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(n > 0, 1.0 - censored / n, 1.0)
    return uniq, np.cumprod(factor)


def cox_fit(
    time: ArrayLike,
    event: ArrayLike,
    x: ArrayLike,
    offset: ArrayLike | None = None,
    max_iter: int = 50,
    groups: tuple[Array, NDArray[np.intp]] | None = None,
) -> tuple[Array, Array, tuple[Array, Array]]:
    """Cox proportional hazards by Newton on the Breslow partial likelihood.

    Returns coefficients, their covariance, and the Breslow baseline cumulative hazard
    (unique event times, H0 including the jump at each). ``groups``: ``np.unique(time,
    return_inverse=True)`` when the caller has it already (several fits on the same times).
    """
    t = np.asarray(time, dtype=np.float64)
    d = np.asarray(event) == 1
    xs = np.asarray(x, dtype=np.float64).reshape(t.size, -1)
    off = np.zeros(t.size) if offset is None else np.asarray(offset, dtype=np.float64)
    # Risk sets are reverse cumulative sums over the unique times (a few thousand with day
    # resolution), so each Newton step is a handful of bincounts over the rows: O(n p²).
    uniq, group = np.unique(t, return_inverse=True) if groups is None else groups
    g = uniq.size
    deaths = np.bincount(group[d], minlength=g).astype(np.float64)
    at = deaths > 0
    p = xs.shape[1]
    pairs = [(k, m) for k in range(p) for m in range(k, p)]
    event_x = xs[d].sum(axis=0)
    beta = np.zeros(p)

    def rev(v: Array) -> Array:
        return np.cumsum(v[::-1])[::-1]

    def sums(b: Array) -> tuple[float, Array, Array, Array]:
        eta = off + xs @ b
        shift = eta.max()
        w = np.exp(eta - shift)
        s0 = rev(np.bincount(group, w, minlength=g))
        s1 = np.column_stack([rev(np.bincount(group, w * xs[:, k], minlength=g)) for k in range(p)])
        s2 = np.zeros((g, p, p))
        for k, m in pairs:
            s2[:, k, m] = s2[:, m, k] = rev(np.bincount(group, w * xs[:, k] * xs[:, m], minlength=g))
        dj, s0j = deaths[at], s0[at]
        ll = float(np.sum(eta[d] - shift) - np.sum(dj * np.log(s0j)))
        mean = s1[at] / s0j[:, None]
        grad = event_x - np.sum(dj[:, None] * mean, axis=0)
        info = np.sum(dj[:, None, None] * (s2[at] / s0j[:, None, None] - mean[:, :, None] * mean[:, None, :]), axis=0)
        return ll, grad, info, s0

    ll, grad, info, _ = sums(beta)
    for _ in range(max_iter):
        step = np.linalg.solve(info, grad)
        if np.max(np.abs(step)) < 1e-10:
            break
        # halve only on a real decrease: a sum over many rows carries rounding of ~1e-12 relative
        size, floor = 1.0, ll - 1e-10 * max(1.0, abs(ll))
        while True:
            trial = beta + size * step
            new_ll, new_grad, new_info, _ = sums(trial)
            if new_ll >= floor or size < 1e-6:
                break
            size /= 2
        beta, grad, info, ll = trial, new_grad, new_info, new_ll
    w = np.exp(off + xs @ beta)
    s0 = rev(np.bincount(group, w, minlength=g))
    event_times = uniq[at]
    h0 = np.cumsum(deaths[at] / s0[at])
    return beta, np.linalg.inv(info), (event_times, h0)


def _dominance(
    pos_from: NDArray[np.int64], rank: NDArray[np.int64], query_ranks: list[NDArray[np.int64]]
) -> list[Array]:
    """For each query q and each ``query_rank``: #{rows j with position < pos_from[q] and rank[j] < query_rank[q]}.

    A merge-sort tree built one level at a time with numpy sorts: O(n log² n), no Python loop per row.
    ``rank`` is indexed by position (rows sorted by position). A key is (block << bits) | rank, so
    each level's keys are the previous level's with the block halved: sorted runs, which the stable
    sort merges cheaply. Block b starts at b << level among the sorted keys; the needles are looked
    up in sorted order (binary searches in memory order, several times faster than scattered).
    """
    n = rank.size
    top = max([int(rank.max())] + [int(q.max()) for q in query_ranks if q.size])
    bits = max(1, (top + 1).bit_length())
    mask = (1 << bits) - 1
    totals = [np.zeros(pos_from.size) for _ in query_ranks]
    keys = (np.arange(n, dtype=np.int64) << bits) | rank  # level 0: one row per block, sorted
    level = 0
    while (1 << level) <= n:
        if level:
            keys = np.sort(((keys >> (bits + 1)) << bits) | (keys & mask), kind="stable")
        selected = np.flatnonzero(((pos_from >> level) & 1) == 1)
        if selected.size:
            b = (pos_from[selected] >> level) - 1
            start = b << level  # every block below the last is full
            base = b << bits
            order = np.argsort(base + query_ranks[0][selected])
            for total, query_rank in zip(totals, query_ranks, strict=True):
                needles = (base + query_rank[selected])[order]
                found = np.empty(selected.size, dtype=np.int64)
                found[order] = np.searchsorted(keys, needles, side="left")
                total[selected] += found - start
        level += 1
    return totals


def uno_c(
    time: ArrayLike, event: ArrayLike, score: ArrayLike, tau: float, censoring: tuple[Array, Array] | None = None
) -> float:
    """Uno's C truncated at ``tau``: pairs (i event before tau, j later or censored at T_i), weights 1/Ĝ(T_i)².

    ``censoring``: :func:`censoring_survival` of these times and events, when the caller has it.
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event) == 1
    s = np.asarray(score, dtype=np.float64)
    g_times, g = censoring_survival(t, e) if censoring is None else censoring
    # order: by time, events before censorings at the same time; an event is comparable with rows
    # after its time group's last event
    order = np.lexsort((~e, t))
    t, e, s = t[order], e[order], s[order]
    _, rank = np.unique(s, return_inverse=True)
    rank = rank.astype(np.int64)
    events_in_group = np.add.reduceat(e.astype(np.int64), np.searchsorted(t, np.unique(t)))
    group_start = np.searchsorted(t, t, side="left")
    uniq_idx = np.searchsorted(np.unique(t), t)
    start = group_start + events_in_group[uniq_idx]  # first comparable position
    cases = np.flatnonzero(e & (t < tau))
    if cases.size == 0:
        return float("nan")
    g_at = step_at(g_times, g, t[cases])
    w = 1.0 / np.square(g_at)
    sorted_ranks = np.sort(rank)
    less_all = np.searchsorted(sorted_ranks, rank[cases], side="left")
    le_all = np.searchsorted(sorted_ranks, rank[cases], side="right")
    less_before, le_before = _dominance(start[cases], rank, [rank[cases], rank[cases] + 1])
    less = less_all - less_before
    ties = (le_all - le_before) - less
    comparable = t.size - start[cases]
    return float(np.sum(w * (less + 0.5 * ties)) / np.sum(w * comparable))


def cumulative_dynamic_auc(
    time: ArrayLike, event: ArrayLike, score: ArrayLike, t: float, censoring: tuple[Array, Array] | None = None
) -> float:
    """AUC(t): cases T_i <= t with the event (weight 1/Ĝ(T_i)), controls T_j > t (``censoring`` as in uno_c)."""
    tt = np.asarray(time, dtype=np.float64)
    e = np.asarray(event) == 1
    s = np.asarray(score, dtype=np.float64)
    g_times, g = censoring_survival(tt, e) if censoring is None else censoring
    case = e & (tt <= t)
    controls = np.sort(s[tt > t])
    if not case.any() or controls.size == 0:
        return float("nan")
    w = 1.0 / step_at(g_times, g, tt[case])
    less = np.searchsorted(controls, s[case], side="left")
    le = np.searchsorted(controls, s[case], side="right")
    wins = less + 0.5 * (le - less)
    return float(np.sum(w * wins) / (np.sum(w) * controls.size))


def ipcw_brier(
    time: ArrayLike, event: ArrayLike, risk: ArrayLike, t: float, censoring: tuple[Array, Array] | None = None
) -> float:
    """Graf's IPCW Brier score at ``t`` for predicted risks (1 - predicted survival; ``censoring`` as in uno_c)."""
    tt = np.asarray(time, dtype=np.float64)
    e = np.asarray(event) == 1
    surv = 1.0 - np.asarray(risk, dtype=np.float64)
    g_times, g = censoring_survival(tt, e) if censoring is None else censoring
    g_t = float(step_at(g_times, g, t))
    g_y = step_at(g_times, g, tt)
    g_y = np.where(g_y == 0, np.inf, g_y)
    case = (tt <= t) & e
    control = tt > t
    return float(np.mean(np.square(surv) * case / g_y + np.square(1.0 - surv) * control / g_t))


def _cloglog(p: Array) -> Array:
    return np.log(-np.log1p(-np.clip(p, _EPS, 1 - _EPS)))


def time_to_event_metrics(
    time: ArrayLike,
    cause: ArrayLike,
    risk: ArrayLike,
    horizon: float,
    competing: bool,
    censoring: tuple[Array, Array] | None = None,
) -> dict[str, Any]:
    """Every metric at one horizon (days) for predicted risks ``risk`` by that horizon.

    ``censoring``: :func:`censoring_survival` of ``time`` and ``cause == 1``, when the caller
    has it (the same for every horizon of a site); computed here otherwise.

    ``cause``: 0 censored, 1 the outcome, 2 the competing event. With ``competing`` the observed
    risk (and so O:E and the calibration intercept) is Aalen-Johansen; otherwise Kaplan-Meier,
    with competing events censored. Slope, ICI, Brier, C and AUC censor competing events (the
    cause-specific view) in both cases; the report says so.
    """
    tt = np.asarray(time, dtype=np.float64)
    c = np.asarray(cause, dtype=np.int64)
    p = np.clip(np.asarray(risk, dtype=np.float64), _EPS, 1 - _EPS)
    n = int(tt.size)
    events = int(np.sum((c == 1) & (tt <= horizon)))
    comp = int(np.sum((c == 2) & (tt <= horizon)))
    censored = int(np.sum((c == 0) & (tt < horizon)))
    out: dict[str, Any] = {
        "horizon_days": horizon,
        "n": n,
        "events": events,
        "competing_events": comp,
        "censored_before_horizon": censored,
        "estimator": "aalen-johansen" if competing else "kaplan-meier",
        "expected_risk": float(p.mean()) if n else None,
    }
    names = (
        "observed_risk",
        "observed_expected",
        "calibration_intercept",
        "calibration_slope",
        "ici",
        "e50",
        "e90",
        "brier",
        "c_index",
        "auc",
    )
    if not enough(events, n - events):
        out.update({name: Metric.insufficient() for name in names})
        out["curve"] = None
        return out
    if competing:
        times, cif = aalen_johansen(tt, c)
        observed = float(step_at(times, cif, horizon, before=0.0))
        out["observed_risk"] = Metric(observed)
    else:
        times, surv, green = kaplan_meier(tt, c)
        s = float(step_at(times, surv, horizon))
        v = float(step_at(times, green, horizon, before=0.0))
        # log(-log) interval for S, turned into risk
        se = np.sqrt(v) / abs(np.log(s)) if 0 < s < 1 else 0.0
        s_lo, s_hi = s ** np.exp(Z95 * se), s ** np.exp(-Z95 * se)
        observed = 1.0 - s
        out["observed_risk"] = Metric(observed, 1.0 - s_hi, 1.0 - s_lo)
    oe = observed / float(p.mean())
    half = Z95 / np.sqrt(events)
    out["observed_expected"] = Metric(oe, oe * np.exp(-half), oe * np.exp(half))
    h = -np.log1p(-p)
    a = brentq(lambda a: float(np.mean(-np.expm1(-np.exp(a) * h))) - observed, -20.0, 20.0, xtol=1e-12)
    out["calibration_intercept"] = Metric(float(a))
    # administrative censoring at the horizon: the model speaks only about [0, horizon]
    ev = (c == 1) & (tt <= horizon)
    tc = np.minimum(tt, horizon)
    cll = _cloglog(p)
    groups = np.unique(tc, return_inverse=True)  # both Cox fits share the risk-set grouping
    beta, cov, _ = cox_fit(tc, ev, cll[:, None], groups=groups)
    sb = float(np.sqrt(cov[0, 0]))
    out["calibration_slope"] = Metric(float(beta[0]), float(beta[0] - Z95 * sb), float(beta[0] + Z95 * sb))
    curve = smoothed_survival_calibration(tc, ev, p, horizon, groups=groups)
    out.update(error_summary(curve.pop("fitted"), p))
    out["curve"] = curve
    g = censoring_survival(tt, c == 1) if censoring is None else censoring
    out["brier"] = Metric(ipcw_brier(tt, c == 1, p, horizon, censoring=g))
    out["c_index"] = Metric(uno_c(tt, c == 1, p, horizon, censoring=g))
    # sksurv requires t inside [min, max) of the observed times
    t_auc = min(horizon, float(np.nextafter(tt.max(), -np.inf)))
    out["auc"] = Metric(cumulative_dynamic_auc(tt, c == 1, p, t_auc, censoring=g))
    return out


def smoothed_survival_calibration(
    time: Array,
    event: NDArray[np.bool_],
    risk: Array,
    horizon: float,
    groups: tuple[Array, NDArray[np.intp]] | None = None,
) -> dict[str, Any]:
    """Observed risk at the horizon as a smooth function of predicted risk.

    A Cox model on cloglog p̂ and one restricted-cubic-spline term (knots at its 10th, 50th and
    90th centiles); p̃ = 1 - exp(-H0(t)·exp(Xβ)). The 95% band is the delta method on the
    coefficients (the baseline hazard's own uncertainty is not in it; it is small beside them
    with the event counts monitoring needs).
    """
    cll = _cloglog(risk)
    knots = np.quantile(cll, [0.1, 0.5, 0.9])
    design = np.column_stack([cll, rcs_basis(cll, knots)])
    beta, cov, (event_times, h0) = cox_fit(time, event, design, groups=groups)
    h_t = float(step_at(event_times, h0, horizon, before=0.0))
    fitted = -np.expm1(-h_t * np.exp(design @ beta))
    grid = np.quantile(risk, np.linspace(0.01, 0.99, 50))
    gcll = _cloglog(grid)
    gdesign = np.column_stack([gcll, rcs_basis(gcll, knots)])
    eta = gdesign @ beta
    se = np.sqrt(np.einsum("ij,jk,ik->i", gdesign, cov, gdesign))

    def risk_at(e: Array) -> Array:
        return -np.expm1(-h_t * np.exp(e))

    return {
        "fitted": fitted,
        "grid": grid,
        "observed": risk_at(eta),
        "low": risk_at(eta - Z95 * se),
        "high": risk_at(eta + Z95 * se),
    }
