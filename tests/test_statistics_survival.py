"""Time-to-event metrics against lifelines, scikit-survival and statsmodels on the same rows."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow.compute as pc
import pytest
from lifelines import AalenJohansenFitter, KaplanMeierFitter
from sksurv.metrics import brier_score, concordance_index_ipcw, cumulative_dynamic_auc
from sksurv.nonparametric import cumulative_incidence_competing_risks
from sksurv.util import Surv
from statsmodels.duration.hazard_regression import PHReg

from kgrid_py.learning import survival as sv
from kgrid_py.learning.cohort import Site, baseline_hazard_factor, kfre_cohort, simulate_times
from kgrid_py.learning.statistics import INSUFFICIENT, rcs_basis

HORIZONS = [730, 1826]


@pytest.fixture(scope="module")
def cohort():
    return kfre_cohort(seed=7)


def _site(cohort, name):
    rows = cohort.filter(pc.equal(cohort["site"], name))
    time = rows["time_days"].to_numpy().astype(np.float64)
    return time, rows["cause"].to_numpy().astype(np.int64), rows["risk_2y"].to_numpy(), rows["risk_5y"].to_numpy()


@pytest.mark.parametrize("site", ["calibrated", "underpredicted"])
@pytest.mark.parametrize("horizon", HORIZONS)
def test_discrimination_and_brier_match_scikit_survival(cohort, site, horizon):
    time, cause, r2, r5 = _site(cohort, site)
    risk = r2 if horizon == 730 else r5
    event = cause == 1
    y = Surv.from_arrays(event, time)
    assert sv.uno_c(time, event, risk, horizon) == pytest.approx(
        concordance_index_ipcw(y, y, risk, tau=horizon)[0], abs=1e-12
    )
    assert sv.cumulative_dynamic_auc(time, event, risk, horizon) == pytest.approx(
        cumulative_dynamic_auc(y, y, risk, [horizon])[0][0], abs=1e-12
    )
    assert sv.ipcw_brier(time, event, risk, horizon) == pytest.approx(
        brier_score(y, y, (1 - risk)[:, None], [horizon])[1][0], abs=1e-12
    )


def test_uno_c_with_tied_scores_and_times_matches_scikit_survival():
    rng = np.random.default_rng(3)
    time = rng.integers(1, 40, 3000).astype(np.float64)  # many tied times
    event = rng.uniform(size=3000) < 0.4
    score = rng.integers(0, 12, 3000).astype(np.float64)  # many tied scores
    y = Surv.from_arrays(event, time)
    for tau in (10.0, 25.0, 39.0):
        assert sv.uno_c(time, event, score, tau) == pytest.approx(
            concordance_index_ipcw(y, y, score, tau=tau)[0], abs=1e-12
        )


@pytest.mark.parametrize("site", ["calibrated", "underpredicted", "small-a"])
def test_kaplan_meier_matches_lifelines(cohort, site):
    time, cause, _, _ = _site(cohort, site)
    times, surv, _ = sv.kaplan_meier(time, cause)
    km = KaplanMeierFitter().fit(time, cause == 1)
    probe = np.array([0.0, 100.0, 730.0, 1000.5, 1826.0, 5000.0])
    expected = km.survival_function_at_times(probe).to_numpy()
    assert np.max(np.abs(sv.step_at(times, surv, probe) - expected)) < 1e-12


def test_greenwood_interval_matches_lifelines(cohort):
    time, cause, _, r5 = _site(cohort, "calibrated")
    out = sv.time_to_event_metrics(time, cause, r5, 1826, competing=False)
    km = KaplanMeierFitter().fit(time, cause == 1)
    ci = km.confidence_interval_survival_function_.to_numpy()
    idx = np.searchsorted(km.timeline, 1826, side="right") - 1
    assert out["observed_risk"].low == pytest.approx(1 - ci[idx, 1], abs=1e-9)
    assert out["observed_risk"].high == pytest.approx(1 - ci[idx, 0], abs=1e-9)


@pytest.mark.parametrize("site", ["calibrated", "underpredicted"])
def test_aalen_johansen_matches_scikit_survival_on_tied_days(cohort, site):
    time, cause, _, _ = _site(cohort, site)
    times, cif = sv.aalen_johansen(time, cause)
    ref_times, ref = cumulative_incidence_competing_risks(cause, time)
    assert np.array_equal(times, ref_times)
    assert np.max(np.abs(cif - ref[1])) < 1e-14


def test_aalen_johansen_matches_lifelines_on_tie_free_times():
    rng = np.random.default_rng(11)
    site = Site("x", 3000)
    years, cause = simulate_times(rng, rng.uniform(0.01, 0.5, 3000), site)
    time = years * 365.25  # continuous: lifelines jitters only tied times
    times, cif = sv.aalen_johansen(time, cause)
    ajf = AalenJohansenFitter(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ajf.fit(time, cause, event_of_interest=1)
    probe = np.array([200.0, 730.0, 1826.0])
    ref = ajf.cumulative_density_.iloc[:, 0]
    expected = [ref[ref.index <= t].iloc[-1] for t in probe]
    assert np.max(np.abs(sv.step_at(times, cif, probe, before=0.0) - expected)) < 1e-12


@pytest.mark.parametrize("horizon", HORIZONS)
def test_calibration_slope_matches_statsmodels_breslow(cohort, horizon):
    time, cause, r2, r5 = _site(cohort, "underpredicted")
    risk = r2 if horizon == 730 else r5
    ev = (cause == 1) & (time <= horizon)
    tc = np.minimum(time, horizon)
    cll = np.log(-np.log1p(-risk))
    ref = PHReg(tc, cll[:, None], status=ev.astype(float), ties="breslow").fit()
    out = sv.time_to_event_metrics(time, cause, risk, horizon, competing=True)
    assert out["calibration_slope"].value == pytest.approx(ref.params[0], abs=1e-8)
    se = (out["calibration_slope"].high - out["calibration_slope"].low) / (2 * 1.959963984540054)
    assert se == pytest.approx(ref.bse[0], rel=1e-6)


def test_smoothed_calibration_matches_statsmodels_cox_on_the_same_spline(cohort):
    time, cause, _, risk = _site(cohort, "calibrated")
    horizon = 1826
    ev = (cause == 1) & (time <= horizon)
    tc = np.minimum(time, horizon)
    cll = np.log(-np.log1p(-risk))
    design = np.column_stack([cll, rcs_basis(cll, np.quantile(cll, [0.1, 0.5, 0.9]))])
    ref = PHReg(tc, design, status=ev.astype(float), ties="breslow").fit()
    beta, _, (event_times, h0) = sv.cox_fit(tc, ev, design)
    assert np.max(np.abs(beta - ref.params)) < 1e-7
    # statsmodels gives the cumulative hazard just before each failure time (learning-loop.md): ours
    # includes the jump there, so ours shifted by one event time must equal it
    bt, bh, _ = ref.model.baseline_cumulative_hazard(ref.params)[0]
    assert np.array_equal(event_times, bt)
    assert np.max(np.abs(np.concatenate([[0.0], h0[:-1]]) - bh)) < 1e-9


def test_calibrated_site_is_calibrated_and_underpredicted_site_is_not(cohort):
    time, cause, _, r5 = _site(cohort, "calibrated")
    good = sv.time_to_event_metrics(time, cause, r5, 1826, competing=False)
    assert 0.85 < good["observed_expected"].value < 1.15
    assert 0.85 < good["calibration_slope"].value < 1.15
    time, cause, _, r5 = _site(cohort, "underpredicted")
    bad = sv.time_to_event_metrics(time, cause, r5, 1826, competing=False)
    # the truth is a baseline hazard factor theta: observed/expected far above 1
    assert bad["observed_expected"].low > 1.3
    assert baseline_hazard_factor(1.5) == pytest.approx(1.53129, abs=1e-5)


def test_too_few_events_is_insufficient_never_a_number(cohort):
    time, cause, r2, _ = _site(cohort, "small-b")
    out = sv.time_to_event_metrics(time, cause, r2, 730, competing=True)
    assert out["events"] < 10
    for name in ("observed_risk", "observed_expected", "calibration_slope", "ici", "c_index", "auc", "brier"):
        assert out[name].value is None
        assert out[name].to_json() == {"status": INSUFFICIENT}
