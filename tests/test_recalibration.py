"""Recalibration estimators against statsmodels on the same rows, and the KFRE baseline simulation.

Truth for the simulation (learning-loop.md §7): KFRE's North-American baseline is the KO's,
H0(t) = ρ t^k through S0(2) = 0.9750, S0(5) = 0.9240; the data follow the non-North-American
baseline (S0 0.9832, 0.9365), so the true update is a_h = ln(-ln S0'(h)) - ln(-ln S0(h)):
-0.401670 at 2 years and -0.186331 at 5.
"""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from statsmodels.duration.hazard_regression import PHReg

from kgrid_py.learning import recalibration as rc

S0_NA = {2: 0.9750, 5: 0.9240}
S0_NON_NA = {2: 0.9832, 5: 0.9365}
HORIZONS = {"risk_2y": 2 * 365.25, "risk_5y": 5 * 365.25}


def weibull(s0: dict[int, float]) -> tuple[float, float]:
    k = float(np.log(np.log(s0[5]) / np.log(s0[2])) / np.log(2.5))
    return k, float(-np.log(s0[2]) / 2**k)


def simulate_kfre(
    rng: np.random.Generator,
    n: int,
    truth: dict[int, float] = S0_NON_NA,
    slope: float = 1.0,
    death_rate: float = 0.05,
    sites: int = 1,
) -> rc.Evidence:
    """KO predictions with the NA baseline; event times from ``truth``'s baseline and ``slope``."""
    lp = np.clip(rng.normal(0.0, 1.3, n), -5.0, 3.0)
    predicted = {f"risk_{h}y": -np.expm1(np.exp(lp) * np.log(S0_NA[h])) for h in (2, 5)}
    k, rho = weibull(truth)
    t1 = (-np.log(rng.uniform(size=n)) / (rho * np.exp(slope * lp))) ** (1 / k)
    t2 = rng.exponential(1 / death_rate, n)
    c = rng.uniform(1.0, 7.0, n)
    stacked = np.column_stack([c, t1, t2])
    cause = np.argmin(stacked, axis=1)
    days = np.ceil(stacked[np.arange(n), cause] * 365.25)  # whole days: ties, as real data has
    site = np.array([f"site-{i % sites}" for i in range(n)])
    return rc.Evidence("time-to-event", dict(HORIZONS), predicted, days, cause, site)


def simulate_logistic(rng: np.random.Generator, n: int, a: float, b: float) -> rc.Evidence:
    lp = rng.normal(-3.0, 1.2, n)
    p = 1 / (1 + np.exp(-lp))
    y = rng.uniform(size=n) < 1 / (1 + np.exp(-(a + b * lp)))
    horizon = 6 * 365.25
    time = np.where(y, rng.uniform(10, horizon, n), horizon + rng.uniform(0, 400, n))
    censored = rng.uniform(size=n) < 0.1  # lost before the horizon: left out of the binary outcome
    time = np.where(censored & ~y, rng.uniform(10, horizon - 1, n), time)
    cause = np.where(y, 1, 0)
    return rc.Evidence("logistic", {"risk_6y": horizon}, {"risk_6y": p}, time, cause, np.full(n, "s"))


@pytest.mark.parametrize("method", ["intercept", "slope"])
def test_logistic_equals_statsmodels_glm(method: str) -> None:
    evidence = simulate_logistic(np.random.default_rng(11), 5000, a=0.4, b=0.8)
    update = rc.fit(evidence, method)
    offset, y = evidence.binary()
    assert len(y) < evidence.n  # the censored-before-horizon rows were left out
    if method == "intercept":
        glm = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=offset)
    else:
        glm = sm.GLM(y, sm.add_constant(offset), family=sm.families.Binomial())
    ref = glm.fit(tol=1e-14, maxiter=100)
    np.testing.assert_allclose(update.estimates, ref.params, rtol=1e-8, atol=0)
    np.testing.assert_allclose(update.se, ref.bse, rtol=1e-8, atol=0)
    np.testing.assert_allclose(update.covariance, ref.cov_params(), rtol=1e-8, atol=0)
    assert update.loglik == pytest.approx(ref.llf, rel=1e-12)


def test_logistic_recovers_truth_and_applies() -> None:
    evidence = simulate_logistic(np.random.default_rng(3), 40000, a=0.5, b=0.9)
    update = rc.fit(evidence, "slope")
    assert abs(update.estimates[0] - 0.5) < 4 * update.se[0]
    assert abs(update.estimates[1] - 0.9) < 4 * update.se[1]
    p = np.array([1e-6, 0.01, 0.5, 0.99])
    expected = 1 / (1 + np.exp(-(update.estimates[0] + update.estimates[1] * np.log(p / (1 - p)))))
    np.testing.assert_allclose(update.apply("risk_6y", p), expected, rtol=1e-13)


def test_cox_slope_equals_statsmodels_phreg() -> None:
    evidence = simulate_kfre(np.random.default_rng(5), 6000, slope=0.8)
    update = rc.fit(evidence, "slope")
    x = rc.cloglog(evidence.predicted["risk_2y"])
    ref = PHReg(evidence.time, x[:, None], status=(evidence.cause == 1).astype(float), ties="breslow").fit()
    b = update.estimates[update.names.index("b")]
    assert b == pytest.approx(ref.params[0], rel=1e-8)
    assert update.se[update.names.index("b")] == pytest.approx(ref.bse[0], rel=1e-8)
    assert update.loglik == pytest.approx(ref.llf, rel=1e-10)


@pytest.mark.parametrize("method", ["intercept", "slope"])
def test_baseline_equals_statsmodels_breslow(method: str) -> None:
    """a_h = ln Ĥ(h) with the KO's cloglog (times b) as offset, against PHReg's Breslow baseline."""
    evidence = simulate_kfre(np.random.default_rng(9), 5000, slope=0.9)
    update = rc.fit(evidence, method)
    b = update.slope
    status = (evidence.cause == 1).astype(float)
    for output, horizon in HORIZONS.items():
        x = rc.cloglog(evidence.predicted[output])
        model = PHReg(evidence.time, x[:, None], status=status, ties="breslow")
        times, before, _ = model.baseline_cumulative_hazard(np.array([b]))[0]
        # statsmodels gives the value just before each failure time (cumsum(h0) - h0), so Σ_{t_j <= h}
        # is its value at the first failure time after h (the horizons lie well inside follow-up).
        after = np.searchsorted(times, horizon, side="right")
        assert after < len(times)
        assert update.intercept(output) == pytest.approx(np.log(before[after]), rel=1e-8)


def test_baseline_se_matches_breslow_variance_by_hand() -> None:
    evidence = simulate_kfre(np.random.default_rng(21), 3000)
    update = rc.fit(evidence, "intercept")
    event = evidence.cause == 1
    for i, (output, horizon) in enumerate(HORIZONS.items()):
        w = np.exp(rc.cloglog(evidence.predicted[output]))
        times = np.unique(evidence.time[event & (evidence.time <= horizon)])
        at_risk = np.array([w[evidence.time >= t].sum() for t in times])
        d = np.array([np.sum(event & (evidence.time == t)) for t in times])
        hat = np.sum(d / at_risk)
        assert update.estimates[i] == pytest.approx(np.log(hat), rel=1e-12)
        assert update.se[i] == pytest.approx(np.sqrt(np.sum(d / at_risk**2)) / hat, rel=1e-10)


def test_kfre_non_north_american_baseline_is_recovered() -> None:
    """95% CIs of a_2y and a_5y cover the non-NA shift in >= 94% of seeded simulations."""
    truth = {f"risk_{h}y": np.log(np.log(S0_NON_NA[h]) / np.log(S0_NA[h])) for h in (2, 5)}
    assert truth["risk_2y"] == pytest.approx(-0.401670, abs=1e-6)
    assert truth["risk_5y"] == pytest.approx(-0.186331, abs=1e-6)
    runs, covered = 400, {o: 0 for o in truth}
    rng = np.random.default_rng(2016)
    for _ in range(runs):
        update = rc.fit(simulate_kfre(rng, 8000), "intercept")
        for i, output in enumerate(update.names):
            name = output[2:-1]
            low, high = update.estimates[i] - 1.96 * update.se[i], update.estimates[i] + 1.96 * update.se[i]
            covered[name] += low <= truth[name] <= high
    for output, count in covered.items():
        assert count / runs >= 0.94, (output, count / runs)


def test_bad_evidence_is_a_named_error() -> None:
    with pytest.raises(rc.RecalibrationError, match="strictly between 0 and 1"):
        rc.Evidence("logistic", {"r": 10.0}, {"r": np.array([0.0, 0.5])}, np.ones(2), np.zeros(2, int), np.full(2, "s"))
    with pytest.raises(rc.RecalibrationError, match="cause must be"):
        rc.Evidence("logistic", {"r": 10.0}, {"r": np.array([0.1, 0.5])}, np.ones(2), np.array([0, 3]), np.full(2, "s"))
    separated = rc.Evidence(
        "logistic",
        {"r": 1.0},
        {"r": np.array([0.1, 0.2, 0.8, 0.9])},
        np.array([2, 2, 0.5, 0.5]),
        np.array([0, 0, 1, 1]),
        np.full(4, "s"),
    )
    with pytest.raises(rc.NotConverged):
        rc.fit(separated, "slope")
