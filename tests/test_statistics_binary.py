"""Binary and continuous metrics against statsmodels and scikit-learn on the same rows."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.special import expit, logit
from sklearn.metrics import brier_score_loss, roc_auc_score

from kgrid_py.learning.statistics import INSUFFICIENT, binary_metrics, continuous_metrics, rcs_basis


def _cohort(seed: int, n: int, a: float, b: float):
    rng = np.random.default_rng(seed)
    lp = rng.normal(-2.0, 1.0, n)
    p = expit(lp)
    y = (rng.uniform(size=n) < expit(a + b * lp)).astype(float)
    return y, p


@pytest.mark.parametrize(
    ("a", "b"), [(0.0, 1.0), (0.7, 0.6), (-0.5, 1.4)], ids=["calibrated", "high-flat", "low-steep"]
)
def test_binary_metrics_match_statsmodels_and_sklearn(a, b):
    y, p = _cohort(5, 5000, a, b)
    out = binary_metrics(y, p)
    lp = logit(p)
    itl = sm.GLM(y, np.ones((y.size, 1)), family=sm.families.Binomial(), offset=lp).fit(tol=1e-12)
    slope = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit(tol=1e-12)
    assert out["calibration_intercept"].value == pytest.approx(itl.params[0], abs=1e-8)
    assert out["calibration_slope"].value == pytest.approx(slope.params[1], abs=1e-8)
    lo, hi = slope.conf_int()[1]
    assert (out["calibration_slope"].low, out["calibration_slope"].high) == pytest.approx((lo, hi), abs=1e-7)
    assert out["auc"].value == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert out["brier"].value == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    oe = y.sum() / p.sum()
    se = np.sqrt((1 - y.mean()) / y.sum())
    assert out["observed_expected"].value == pytest.approx(oe, rel=1e-12)
    assert out["observed_expected"].high == pytest.approx(oe * np.exp(1.959963984540054 * se), rel=1e-12)
    # ICI: the same RCS logistic smoother fitted by statsmodels
    knots = np.quantile(lp, [0.1, 0.5, 0.9])
    design = np.column_stack([np.ones_like(lp), lp, rcs_basis(lp, knots)])
    smooth = sm.GLM(y, design, family=sm.families.Binomial()).fit(tol=1e-12).predict(design)
    diff = np.abs(smooth - p)
    assert out["ici"].value == pytest.approx(diff.mean(), abs=1e-8)
    assert out["e50"].value == pytest.approx(np.median(diff), abs=1e-8)
    assert out["e90"].value == pytest.approx(np.quantile(diff, 0.9), abs=1e-8)


def test_ici_is_close_to_the_true_miscalibration():
    y, p = _cohort(9, 200_000, 0.7, 0.6)
    truth = np.mean(np.abs(expit(0.7 + 0.6 * logit(p)) - p))
    assert binary_metrics(y, p)["ici"].value == pytest.approx(truth, abs=0.005)


def test_auc_with_tied_scores_matches_sklearn():
    rng = np.random.default_rng(1)
    p = rng.integers(1, 9, 3000) / 10
    y = (rng.uniform(size=3000) < p).astype(int)
    assert binary_metrics(y, p)["auc"].value == pytest.approx(roc_auc_score(y, p), abs=1e-12)


@pytest.mark.parametrize("events", [0, 1, 9])
def test_fewer_than_ten_events_is_insufficient(events):
    p = np.full(500, 0.05)
    y = np.zeros(500)
    y[:events] = 1
    out = binary_metrics(y, p)
    for name in ("observed_expected", "calibration_intercept", "calibration_slope", "ici", "brier", "auc"):
        assert out[name].to_json() == {"status": INSUFFICIENT}


def test_continuous_metrics_recover_the_simulated_truth():
    rng = np.random.default_rng(4)
    egfr = rng.uniform(15, 120, 100_000)
    d, s = 0.05, 0.15
    mgfr = np.exp(np.log(egfr) + d + rng.normal(0, s, egfr.size))
    out = continuous_metrics(mgfr, egfr)
    from scipy.stats import norm

    p30 = norm.cdf((-np.log(0.7) - d) / s) - norm.cdf((-np.log(1.3) - d) / s)
    # P30 as defined (|eGFR - mGFR| <= 0.3 mGFR) is the share with ln(mGFR/eGFR) in [-ln 1.3, -ln 0.7]
    assert out["p30"].value == pytest.approx(p30, abs=0.005)
    diffs = mgfr - egfr
    assert out["bias"].value == pytest.approx(np.median(diffs), abs=1e-12)
    assert out["rmse"].value == pytest.approx(np.sqrt(np.mean(diffs**2)), abs=1e-9)
    assert continuous_metrics(mgfr[:9], egfr[:9])["p30"].to_json() == {"status": INSUFFICIENT}
