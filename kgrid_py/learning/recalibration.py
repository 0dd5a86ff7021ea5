"""Recalibration estimators: update a KO's risk outputs from observed outcomes, without new inputs.

Every update is a post-processing of the KO's own predicted risks, so the same numbers drive the
estimates, the new ONNX graph (:mod:`kgrid_py.learning.graph_update`) and federation:

- **logistic** (binary outcome within a horizon, e.g. PLCOm2012): ``o = logit(p)``;
  ``intercept``: logit p' = a + o (o as offset); ``slope``: logit p' = a + b·o. Newton-Raphson on
  the binomial log-likelihood, equal to ``statsmodels`` GLM(Binomial, offset) on the same rows.
- **time-to-event** (KFRE): ``o_h = cloglog(p_h) = ln H_i(h)``, the KO's own log cumulative hazard
  at horizon h (its log baseline plus its linear predictor; it differs from the LP by a constant,
  so the Cox slope on it is the slope on the LP). ``intercept`` re-estimates the baseline at each
  horizon with o_h as offset (Breslow): a_h = ln Σ_{t_j<=h} d_j / Σ_{R(t_j)} e^{o_h}, so
  cloglog p'_h = a_h + o_h, exactly a new S0(h) (KFRE's non-North-American version is this);
  ``slope`` fits b by the Cox partial likelihood (Breslow ties) with o at the first horizon as the
  only covariate, then the baseline with b·o_h as offset: cloglog p'_h = a_h + b·o_h.
  Censoring is handled by the risk sets. A competing event (cause 2) is censored: the update
  estimates the cause-specific hazard, i.e. the *net* risk the KO's Cox form predicts; the data
  summary counts competing events so a reader sees how many there were.

Standard errors: logistic, the inverse observed information; Cox slope, 1/I(b); the baseline,
the Breslow variance Σ d_j/S0_j² plus the slope's share through dĤ/db (Tsiatis), with
Cov(Ĥ(h1), Ĥ(h2)) from the shared increments, carried to a_h = ln Ĥ(h) by the delta method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from kgrid_py.errors import KgridError

__all__ = [
    "CoxSums",
    "Evidence",
    "Kind",
    "Method",
    "NotConverged",
    "RecalibrationError",
    "Update",
    "cloglog",
    "cox_sums",
    "fit",
    "fit_cox_slope",
    "fit_logistic",
    "logistic_sums",
    "logit",
]

Kind = Literal["logistic", "time-to-event"]
Method = Literal["none", "intercept", "slope"]
MAX_ITERATIONS = 50
_TOLERANCE = 1e-12
_YEAR_DAYS = 365.25


class RecalibrationError(KgridError, ValueError):
    """The data cannot support the update asked for (too few rows, events, or bad values)."""


class NotConverged(RecalibrationError):
    """Newton-Raphson did not converge (separation, or a flat likelihood); nothing is written."""


def logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """ln(p/(1-p)), with 1-p by log1p so small risks keep their precision."""
    return np.log(p) - np.log1p(-p)


def cloglog(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """ln(-ln(1-p)): a Cox-type risk's log cumulative hazard."""
    return np.log(-np.log1p(-p))


@dataclass(frozen=True)
class Evidence:
    """Predicted risks and what happened, one row per patient (the KO's index call).

    ``predicted[output]`` is the KO's risk for each horizon output; ``time`` days from the call to
    the event or last follow-up; ``cause`` 1 the outcome, 2 a competing event, 0 censored;
    ``site`` where the row comes from; ``day`` the call's date as days since 1970 (optional).
    """

    kind: Kind
    horizons: dict[str, float]  # output -> days
    predicted: dict[str, NDArray[np.float64]]
    time: NDArray[np.float64]
    cause: NDArray[np.int64]
    site: NDArray[np.str_]
    day: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        n = len(self.time)
        if not self.horizons:
            raise RecalibrationError("no horizon output to recalibrate")
        if set(self.predicted) != set(self.horizons):
            raise RecalibrationError(f"predictions for {sorted(self.predicted)}, horizons for {sorted(self.horizons)}")
        for name, p in self.predicted.items():
            if len(p) != n:
                raise RecalibrationError(f"{name}: {len(p)} predictions for {n} outcomes")
            if not np.all((p > 0) & (p < 1)):
                raise RecalibrationError(f"{name}: predicted risks must lie strictly between 0 and 1")
        if len(self.cause) != n or len(self.site) != n:
            raise RecalibrationError("time, cause and site must have one value per row")
        if not np.all(np.isfinite(self.time)) or np.any(self.time < 0):
            raise RecalibrationError("follow-up times must be finite and >= 0 days")
        if not np.all(np.isin(self.cause, (0, 1, 2))):
            raise RecalibrationError("cause must be 0 (censored), 1 (the outcome) or 2 (a competing event)")

    @property
    def n(self) -> int:
        return len(self.time)

    @property
    def outputs(self) -> list[str]:
        """Horizon outputs, shortest horizon first."""
        return sorted(self.horizons, key=lambda o: (self.horizons[o], o))

    def take(self, rows: NDArray[np.int64]) -> Evidence:
        """The rows ``rows`` (a bootstrap sample or one site)."""
        return Evidence(
            self.kind,
            dict(self.horizons),
            {k: v[rows] for k, v in self.predicted.items()},
            self.time[rows],
            self.cause[rows],
            self.site[rows],
            None if self.day is None else self.day[rows],
        )

    def binary(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(offset logit p, y) for a logistic KO: outcome by the horizon is 1, followed past it (or a
        competing event first) is 0; censored before the horizon is left out (its status is unknown)."""
        (output,) = self.outputs
        h = self.horizons[output]
        y = (self.cause == 1) & (self.time <= h)
        known = y | (self.time >= h) | (self.cause == 2)
        return logit(self.predicted[output][known]), y[known].astype(np.float64)


@dataclass(frozen=True)
class Update:
    """A fitted update: parameter names and values, their covariance, and the log-likelihood.

    ``transform`` says how each output is mapped: logistic ``logit p' = a + b·logit p``; time to
    event ``cloglog p'_h = a_h + b·cloglog p_h`` (b = 1 unless the method fits a slope).
    """

    kind: Kind
    method: Method
    names: list[str]
    estimates: NDArray[np.float64]
    covariance: NDArray[np.float64]
    loglik: float  # logistic: binomial; time to event: Cox partial (of b; at b = 1 when not fitted)
    iterations: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def se(self) -> NDArray[np.float64]:
        return np.sqrt(np.diag(self.covariance))

    def intercept(self, output: str) -> float:
        """a (logistic) or a_h for ``output`` (time to event); 0 when the method keeps the original."""
        for name in (f"a[{output}]", "a"):
            if name in self.names:
                return float(self.estimates[self.names.index(name)])
        return 0.0

    @property
    def slope(self) -> float:
        return float(self.estimates[self.names.index("b")]) if "b" in self.names else 1.0

    def apply(self, output: str, p: NDArray[np.float64]) -> NDArray[np.float64]:
        """The updated risk for ``output`` (numpy, float64): the graph update's independent twin."""
        a, b = self.intercept(output), self.slope
        if self.kind == "logistic":
            eta = a + b * logit(p)
            return 1.0 / (1.0 + np.exp(-eta))
        return -np.expm1(-np.exp(a + b * cloglog(p)))

    def as_record(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "method": self.method,
            "parameters": {n: float(v) for n, v in zip(self.names, self.estimates, strict=True)},
            "standard_errors": {n: float(v) for n, v in zip(self.names, self.se, strict=True)},
            "covariance": [[float(v) for v in row] for row in self.covariance],
            "log_likelihood": self.loglik,
            "iterations": self.iterations,
        }


# -- logistic -------------------------------------------------------------------------------------


def logistic_sums(
    offset: NDArray[np.float64], y: NDArray[np.float64], theta: Sequence[float], method: Method
) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
    """(ℓ, gradient, Hessian) of the binomial log-likelihood at ``theta``, summed over the rows.

    ``intercept``: η = a + o, θ = (a,); ``slope``: η = a + b·o, θ = (a, b). A sum over patients, so
    sites may each send theirs and the coordinator adds them (pooled Newton, exactly).
    """
    eta = theta[0] + offset if method == "intercept" else theta[0] + theta[1] * offset
    # One exp for both p and log(1 + e^η) = max(η, 0) + log(1 + e^-|η|), which never overflows
    # (a diverging, separated fit). log(1 + t) rather than log1p(t): an absolute error under 3e-16
    # per row, below the sum's own rounding, at a quarter of log1p's cost on 100,000 rows.
    tail = np.exp(-np.abs(eta))
    p = np.where(eta >= 0.0, 1.0, tail) / (1.0 + tail)
    loglik = float(np.dot(y, eta) - np.sum(np.maximum(eta, 0.0)) - np.sum(np.log(1.0 + tail)))
    residual = y - p
    weight = p * (1.0 - p)
    # The sums written out, not a design matrix: no 2 x n copies on a fit's every step.
    if method == "intercept":
        return loglik, np.array([residual.sum()]), np.array([[-weight.sum()]])
    wo = weight * offset
    cross = -float(wo.sum())
    hessian = np.array([[-float(weight.sum()), cross], [cross, -float(np.dot(wo, offset))]])
    return loglik, np.array([float(residual.sum()), float(np.dot(residual, offset))]), hessian


def newton(
    sums: object, start: NDArray[np.float64], what: str
) -> tuple[NDArray[np.float64], float, NDArray[np.float64], int]:
    """Maximise with Newton-Raphson and step halving on ℓ; (θ, ℓ, Hessian, iterations)."""
    evaluate = sums  # a callable theta -> (loglik, gradient, hessian)
    theta = np.asarray(start, dtype=np.float64)
    loglik, gradient, hessian = evaluate(theta)  # type: ignore[operator]
    for iteration in range(1, MAX_ITERATIONS + 1):
        step = _solve(hessian, gradient, what)
        for _ in range(30):
            candidate = theta - step
            new_loglik, new_gradient, new_hessian = evaluate(candidate)  # type: ignore[operator]
            if math.isfinite(new_loglik) and new_loglik >= loglik - 1e-12 * abs(loglik):
                break
            step = step / 2.0
        else:
            raise NotConverged(f"{what}: no step improves the likelihood (iteration {iteration})")
        theta, loglik, gradient, hessian = candidate, new_loglik, new_gradient, new_hessian
        if np.max(np.abs(step)) < _TOLERANCE * (1.0 + np.max(np.abs(theta))):
            return theta, loglik, hessian, iteration
    raise NotConverged(f"{what}: no convergence in {MAX_ITERATIONS} Newton iterations (separated data?)")


def _solve(hessian: NDArray[np.float64], gradient: NDArray[np.float64], what: str) -> NDArray[np.float64]:
    if not np.all(np.isfinite(hessian)) or np.linalg.matrix_rank(hessian) < len(gradient):
        raise NotConverged(f"{what}: the information matrix is singular (no spread in the predictions?)")
    return np.linalg.solve(hessian, gradient)


def fit_logistic(offset: NDArray[np.float64], y: NDArray[np.float64], method: Method) -> Update:
    """Logistic recalibration (``intercept`` or ``slope``) or the original (``none``: ℓ only)."""
    if method == "none":
        eta = offset
        loglik = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
        return Update("logistic", "none", [], np.zeros(0), np.zeros((0, 0)), loglik)
    start = np.array([0.0]) if method == "intercept" else np.array([0.0, 1.0])
    theta, loglik, hessian, iterations = newton(
        lambda t: logistic_sums(offset, y, t, method), start, f"logistic {method} recalibration"
    )
    names = ["a"] if method == "intercept" else ["a", "b"]
    return Update("logistic", method, names, theta, np.linalg.inv(-hessian), loglik, iterations)


# -- Cox: slope on the KO's log cumulative hazard, and the Breslow baseline -----------------------


@dataclass(frozen=True)
class CoxSums:
    """Distinct event times of one stratum with their risk-set sums at a slope b."""

    times: NDArray[np.float64]
    deaths: NDArray[np.float64]
    s0: NDArray[np.float64]
    s1: NDArray[np.float64]
    s2: NDArray[np.float64]
    event_x: NDArray[np.float64]  # Σ x over the events at each time


@dataclass(frozen=True)
class _RiskSets:
    """One stratum sorted by time once, for the risk-set sums at any slope (a Newton fit's every step)."""

    xs: NDArray[np.float64]  # x in time order
    first: NDArray[np.int64]  # the first row of each distinct time
    times: NDArray[np.float64]  # the distinct times
    deaths: NDArray[np.float64]  # events at each distinct time
    event_x: NDArray[np.float64]  # Σ x over the events at each distinct time
    keep: NDArray[np.bool_]  # distinct times with an event


def _risk_sets(time: NDArray[np.float64], event: NDArray[np.bool_], x: NDArray[np.float64]) -> _RiskSets:
    order = np.argsort(time, kind="stable")
    t, e, xs = time[order], event[order], x[order]
    if not len(t):
        empty = np.zeros(0)
        return _RiskSets(xs, np.zeros(0, dtype=np.int64), empty, empty, empty, np.zeros(0, dtype=bool))
    starts = np.flatnonzero(np.concatenate([[True], t[1:] != t[:-1]]))  # t is sorted: runs, not np.unique
    deaths = np.add.reduceat(e.astype(np.float64), starts)
    event_x = np.add.reduceat(np.where(e, xs, 0.0), starts)
    return _RiskSets(xs, starts, t[starts], deaths, event_x, deaths > 0)


def _sums_at(sets: _RiskSets, b: float) -> CoxSums:
    xs, keep = sets.xs, sets.keep
    w = np.exp(b * xs)
    # Reverse cumulative sums: the risk set at t is every row with T >= t.
    r0 = np.cumsum(w[::-1])[::-1]
    r1 = np.cumsum((xs * w)[::-1])[::-1]
    r2 = np.cumsum((xs * xs * w)[::-1])[::-1]
    at = sets.first[keep]
    return CoxSums(sets.times[keep], sets.deaths[keep], r0[at], r1[at], r2[at], sets.event_x[keep])


def cox_sums(time: NDArray[np.float64], event: NDArray[np.bool_], x: NDArray[np.float64], b: float) -> CoxSums:
    """Risk-set sums S_r(t) = Σ_{T_j >= t} x_j^r e^{b x_j} at each distinct event time (Breslow ties)."""
    return _sums_at(_risk_sets(time, event, x), b)


def _strata(
    time: NDArray[np.float64], event: NDArray[np.bool_], x: NDArray[np.float64], strata: NDArray[np.str_]
) -> list[_RiskSets]:
    if len(strata) and np.all(strata == strata[0]):  # one stratum: no copies
        return [_risk_sets(time, event, x)]
    return [_risk_sets(time[rows], event[rows], x[rows]) for rows in (strata == s for s in np.unique(strata))]


def _partial(sets: list[_RiskSets], b: float) -> tuple[float, float, float]:
    loglik = score = information = 0.0
    for stratum in sets:
        sums = _sums_at(stratum, b)
        mean = sums.s1 / sums.s0
        loglik += float(np.sum(b * sums.event_x - sums.deaths * np.log(sums.s0)))
        score += float(np.sum(sums.event_x - sums.deaths * mean))
        information += float(np.sum(sums.deaths * (sums.s2 / sums.s0 - mean * mean)))
    return loglik, score, information


def cox_partial(
    time: NDArray[np.float64],
    event: NDArray[np.bool_],
    x: NDArray[np.float64],
    strata: NDArray[np.str_],
    b: float,
) -> tuple[float, float, float]:
    """(ℓ, U, I) of the Cox partial likelihood in b, stratified (one risk set per stratum), Breslow ties."""
    return _partial(_strata(time, event, x, strata), b)


def fit_cox_slope(
    time: NDArray[np.float64], event: NDArray[np.bool_], x: NDArray[np.float64], strata: NDArray[np.str_]
) -> tuple[float, float, float, int]:
    """Cox slope on x from b = 1: (b, Var b, ℓ at b, iterations); equals statsmodels PHReg (Breslow).

    The rows are sorted once per stratum, not at every Newton step."""
    sets = _strata(time, event, x, strata)

    def sums(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
        loglik, score, information = _partial(sets, float(theta[0]))
        return loglik, np.array([score]), np.array([[-information]])

    theta, loglik, hessian, iterations = newton(sums, np.array([1.0]), "Cox slope")
    return float(theta[0]), float(1.0 / -hessian[0, 0]), loglik, iterations


def fit_time_to_event(evidence: Evidence, method: Method) -> Update:
    """Baseline (``intercept``) or baseline and slope (``slope``) at each horizon; see the module."""
    event = evidence.cause == 1
    outputs = evidence.outputs
    if event.sum() == 0:
        raise RecalibrationError("no outcome events: the baseline cannot be re-estimated")
    x = {o: cloglog(evidence.predicted[o]) for o in outputs}
    strata = np.full(evidence.n, "all")
    if method == "slope":
        b, var_b, loglik, iterations = fit_cox_slope(evidence.time, event, x[outputs[0]], strata)
    else:
        b, var_b, iterations = 1.0, 0.0, 0
        loglik = cox_partial(evidence.time, event, x[outputs[0]], strata, 1.0)[0]
    if method == "none":
        return Update("time-to-event", "none", [], np.zeros(0), np.zeros((0, 0)), loglik)
    # Per horizon h: Ĥ_h = Σ_{t_j<=h} d_j/S0_h(t_j) (offset b·x_h) and q_h = dĤ_h/db = -Σ d_j S1_h/S0_h².
    # Horizons share the event times, so Cov(Ĥ_h, Ĥ_g) = Σ_{t_j <= min(h, g)} d_j/(S0_h S0_g) + q_h q_g Var b.
    hats, weights, upto, slopes_q = [], [], [], []
    for o in outputs:
        sums = cox_sums(evidence.time, event, x[o], b)
        within = sums.times <= evidence.horizons[o]
        hat = float(np.sum(sums.deaths[within] / sums.s0[within]))
        if hat <= 0:
            raise RecalibrationError(f"{o}: no outcome event within {evidence.horizons[o]:g} days")
        hats.append(hat)
        weights.append(sums.deaths / sums.s0)
        upto.append(within)
        q = -float(np.sum(sums.deaths[within] * sums.s1[within] / sums.s0[within] ** 2))
        slopes_q.append(q if method == "slope" else 0.0)
    k = len(outputs)
    cov_h = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            shared = upto[i] & upto[j]
            cov_h[i, j] = float(np.sum(weights[i][shared] * weights[j][shared] / sums.deaths[shared]))
            cov_h[i, j] += slopes_q[i] * slopes_q[j] * var_b
    jac = np.diag(1.0 / np.array(hats))  # a_h = ln Ĥ_h
    names = [f"a[{o}]" for o in outputs]
    estimates = np.log(np.array(hats))
    cov = jac @ cov_h @ jac
    if method == "slope":
        cross = np.array(slopes_q) / np.array(hats) * var_b
        cov = np.block([[cov, cross[:, None]], [cross[None, :], np.array([[var_b]])]])
        names.append("b")
        estimates = np.append(estimates, b)
    return Update("time-to-event", method, names, estimates, cov, loglik, iterations)


def fit(evidence: Evidence, method: Method) -> Update:
    """The update ``method`` fitted on ``evidence``, by the KO's outcome kind."""
    if evidence.kind == "logistic":
        offset, y = evidence.binary()
        if len(y) == 0 or y.sum() == 0 or y.sum() == len(y):
            raise RecalibrationError("a logistic update needs both outcomes and non-outcomes by the horizon")
        return fit_logistic(offset, y, method)
    return fit_time_to_event(evidence, method)


def years(days: float) -> float:
    return days / _YEAR_DAYS
