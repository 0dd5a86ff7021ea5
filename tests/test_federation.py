"""Federated recalibration on arrays: exactness against pooled fits, replay, and refused input."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm
from federation_support import KO, Network, logistic_cohort, run_study, split, tte_cohort
from statsmodels.duration.hazard_regression import PHReg

from kgrid_py.learning import federation as fd
from kgrid_py.learning import plans
from kgrid_py.learning.odal import odal2
from kgrid_py.learning.recalibration import NotConverged, cloglog, fit, fit_logistic
from kgrid_py.learning.site_summary import BelowMinimum, grid_edges

SITES = [pytest.param(n, id=f"{n}-sites") for n in (2, 5, 10)]


@pytest.mark.parametrize("n_sites", SITES)
@pytest.mark.parametrize("method", ["intercept", "slope"])
def test_logistic_federated_equals_pooled_newton_and_statsmodels(n_sites: int, method: str) -> None:
    evidence = logistic_cohort(11, n_sites)
    small = split(evidence)["site-00"].binary()[1]
    assert len(small) == 60 and small.sum() >= 10
    final, plans_, _, _ = run_study(evidence, method)
    assert final.rounds <= 8 and len(plans_) == final.rounds
    offset, y = evidence.binary()
    pooled = fit_logistic(offset, y, method)  # type: ignore[arg-type]
    np.testing.assert_allclose(final.update.estimates, pooled.estimates, rtol=0, atol=1e-10)
    x = np.ones((len(y), 1)) if method == "intercept" else sm.add_constant(offset)
    model = sm.GLM(y, x, family=sm.families.Binomial(), offset=offset if method == "intercept" else None)
    reference = model.fit(tol=1e-14, maxiter=100)
    np.testing.assert_allclose(final.update.estimates, reference.params, rtol=1e-8, atol=0)
    np.testing.assert_allclose(final.update.se, reference.bse, rtol=1e-6)


@pytest.mark.parametrize("n_sites", SITES)
def test_cox_slope_stratified_by_site_equals_pooled_and_phreg(n_sites: int) -> None:
    evidence = tte_cohort(5, n_sites)
    small = split(evidence)["site-00"]
    assert small.n == 60 and np.sum(small.cause == 1) >= 10
    final, _, _, _ = run_study(evidence, "slope")
    assert final.rounds <= 8
    pooled = fd.pooled_fit(evidence, "slope")
    np.testing.assert_allclose(final.update.estimates, pooled.estimates, rtol=0, atol=1e-10)
    np.testing.assert_allclose(final.update.covariance, pooled.covariance, rtol=1e-9, atol=1e-14)
    x = cloglog(evidence.predicted["risk_2y"])
    phreg = PHReg(
        evidence.time, x[:, None], status=(evidence.cause == 1).astype(float), strata=evidence.site, ties="breslow"
    )
    reference = phreg.fit(start_params=[1.0], tol=1e-12)
    assert final.update.slope == pytest.approx(float(reference.params[0]), rel=1e-8, abs=0)
    assert math.sqrt(final.update.covariance[-1, -1]) == pytest.approx(float(reference.bse[0]), rel=1e-6)


@pytest.mark.parametrize("method", ["intercept", "slope"])
def test_grid_baseline_equals_a_poisson_glm_on_the_pooled_rows(method: str) -> None:
    """λ_j = ΣD/ΣE is the Poisson GLM with interval dummies and offset ln(e^{b·o}·days at risk)."""
    evidence = tte_cohort(8, 4)
    edges = grid_edges(evidence.horizons, 365.25 / 2)  # half-years: every interval has events
    final, _, _, _ = run_study(evidence, method, grid_days=365.25 / 2)
    b = final.update.slope
    for output in evidence.outputs:
        o = cloglog(evidence.predicted[output])
        rows, days, events, dummies = [], [], [], []
        for j in range(len(edges) - 1):
            at = np.clip(np.minimum(evidence.time, edges[-1]) - edges[j], 0.0, edges[j + 1] - edges[j])
            keep = at > 0
            rows.append(o[keep])
            days.append(at[keep])
            events.append(
                (evidence.cause[keep] == 1) & (evidence.time[keep] > edges[j]) & (evidence.time[keep] <= edges[j + 1])
            )
            dummies.append(np.full(keep.sum(), j))
        o_, d_, e_, j_ = map(np.concatenate, (rows, days, events, dummies))
        design = (j_[:, None] == np.arange(len(edges) - 1)[None, :]).astype(float)
        glm = sm.GLM(e_.astype(float), design, family=sm.families.Poisson(), offset=b * o_ + np.log(d_))
        rates = np.exp(glm.fit(tol=1e-14, maxiter=200).params)
        within = np.asarray(edges[1:]) <= evidence.horizons[output] + 1e-9
        expected = math.log(float(np.sum((rates * np.diff(edges))[within])))
        assert final.update.intercept(output) == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_monthly_grid_baseline_is_close_to_pooled_breslow() -> None:
    """The documented gap: a_h on the monthly grid vs the pooled Breslow a_h (b = 1)."""
    evidence = tte_cohort(3, 5)
    final, _, _, _ = run_study(evidence, "intercept")
    breslow = fit(evidence, "intercept")
    gap = np.abs(final.update.estimates - breslow.estimates)
    assert np.all(gap < 0.05 * breslow.se), (gap, breslow.se)
    assert np.all(gap < 5e-3)  # measured: 0.0009 (2 y) and 0.0025 (5 y) on this cohort


def test_replay_reproduces_every_plan_and_the_estimate_bit_for_bit() -> None:
    evidence = logistic_cohort(2, 4)
    final, plans_, messages, network = run_study(evidence, "slope")
    stored = [[plans.parse(plans.dumps(d), "m") for d in round_] for round_ in messages]  # through JSON
    again = fd.replay([json.loads(json.dumps(p)) for p in plans_], stored, network.trusted)
    assert again.update.estimates.tobytes() == final.update.estimates.tobytes()
    assert again.update.covariance.tobytes() == final.update.covariance.tobytes()
    assert [r["round"] for r in again.round_records] == list(range(1, final.rounds + 1))
    assert {s["site"] for s in again.round_records[0]["sites"]} == set(network.keys)
    altered = json.loads(json.dumps(plans_))
    altered[1]["theta"]["values"][0] += 1e-15
    with pytest.raises(plans.FederationError):
        fd.replay(altered, stored, network.trusted)


def _floats(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_floats(v) for v in value.values())
    if isinstance(value, list):
        return sum(_floats(v) for v in value)
    return 1


def test_a_message_does_not_grow_with_the_site() -> None:
    evidence = tte_cohort(4, 3)
    by_site = split(evidence)
    network = Network.of(list(by_site))
    plan = fd.verify_plan(
        fd.new_plan(
            ko=KO, function="f", kind="time-to-event", method="intercept", horizons=evidence.horizons,
            sites=network.site_keys(), private_key=network.coordinator,
        ),
        network.trusted,
    )  # fmt: skip
    small, large = (
        fd.site_message(plan, by_site[s], s, network.keys[s], KO["content_digest"]) for s in ("site-00", "site-02")
    )
    assert by_site["site-02"].n == 10 * by_site["site-00"].n
    assert _floats(small["payload"]["statistics"]) == _floats(large["payload"]["statistics"])
    assert len(plans.dumps(large)) < 16_000


def test_odal2_one_shot_is_close_to_pooled_but_not_equal() -> None:
    evidence = logistic_cohort(6, 5)
    by_site = split(evidence)
    lead = by_site["site-04"]
    lead_offset, lead_y = lead.binary()
    bar = fit_logistic(lead_offset, lead_y, "slope").estimates.tolist()
    final, plans_, messages, network = run_study(evidence, "slope", start=bar, max_rounds=25)
    first, _ = fd.combine(plans_[0], messages[0], network.trusted)
    n_total = sum(d["payload"]["counts"]["n"] for d in messages[0])
    surrogate = odal2(lead_offset, lead_y, "slope", bar, first["gradient"], first["hessian"], n_total)
    pooled = final.update.estimates
    relative = np.abs(surrogate - pooled) / np.abs(pooled)
    assert np.all(relative < 0.02), relative
    assert np.all(np.abs(surrogate - pooled) < final.update.se / 4)


# -- refused input ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study() -> tuple[fd.Final, list[dict[str, Any]], list[list[dict[str, Any]]], Network]:
    return run_study(logistic_cohort(9, 3), "slope")


def test_a_message_for_another_round_is_refused(study: Any) -> None:
    _, plans_, messages, network = study
    with pytest.raises(plans.FederationError, match="replayed or stale"):
        fd.combine(plans_[1], messages[0], network.trusted)


def test_a_message_for_another_study_is_refused(study: Any) -> None:
    _, plans_, _, network = study
    _, _, other_messages, _ = run_study(logistic_cohort(9, 3), "slope", network=network)
    with pytest.raises(plans.FederationError, match="is for study"):
        fd.combine(plans_[0], other_messages[0], network.trusted)


def test_forged_messages_are_refused(study: Any) -> None:
    _, plans_, messages, network = study
    tampered = json.loads(json.dumps(messages[0][0]))
    tampered["payload"]["statistics"]["gradient"][0] += 1.0
    with pytest.raises(plans.ForgedDocument, match="does not verify"):
        fd.combine(plans_[0], [tampered, *messages[0][1:]], network.trusted)
    impostor = plans.sign(messages[0][0]["payload"], network.keys["site-01"])  # site-00's payload, b's key
    with pytest.raises(plans.ForgedDocument, match="the plan expects key"):
        fd.check_message(plans_[0], impostor, network.trusted)
    stranger = plans.sign(messages[0][0]["payload"], Network.of(["x"]).keys["x"])
    with pytest.raises(plans.ForgedDocument):
        fd.check_message(plans_[0], {**stranger, "key_id": plans_[0]["sites"]["site-00"]}, network.trusted)


def test_two_different_messages_from_one_site_are_refused(study: Any) -> None:
    _, plans_, messages, network = study
    evidence = split(logistic_cohort(10, 3))["site-00"]
    again = fd.site_message(plans_[0], evidence, "site-00", network.keys["site-00"], KO["content_digest"])
    with pytest.raises(plans.FederationError, match="two different messages from site 'site-00'"):
        fd.combine(plans_[0], [*messages[0], again], network.trusted)
    # The very same message twice is harmless (a retried upload).
    fd.combine(plans_[0], [*messages[0], messages[0][0]], network.trusted)


def test_a_missing_site_is_waited_for(study: Any) -> None:
    _, plans_, messages, network = study
    with pytest.raises(fd.MissingMessages, match="waiting for 1 site") as caught:
        fd.combine(plans_[0], messages[0][1:], network.trusted)
    assert caught.value.missing == ["site-00"]


def test_a_site_under_the_minimum_sends_nothing(study: Any) -> None:
    _, plans_, messages, network = study
    plan = {**plans_[0], "minimum": {"patients": 61, "events": 10}}
    small = split(logistic_cohort(9, 3))["site-00"]
    with pytest.raises(BelowMinimum, match=r"60 patients and .* at least 61 patients"):
        fd.site_message(plan, small, "site-00", network.keys["site-00"], KO["content_digest"])
    low = json.loads(json.dumps(messages[0][0]["payload"]))
    low["counts"]["events"] = 3
    with pytest.raises(plans.FederationError, match="below the plan's minimums"):
        fd.check_message(plans_[0], plans.sign(low, network.keys["site-00"]), network.trusted)


def test_a_changed_ko_is_refused_at_the_site(study: Any) -> None:
    _, plans_, _, network = study
    small = split(logistic_cohort(9, 3))["site-00"]
    with pytest.raises(plans.FederationError, match="has changed since the plan"):
        fd.site_message(plans_[0], small, "site-00", network.keys["site-00"], "e" * 64)


def test_a_non_converging_study_raises_and_gives_no_estimate() -> None:
    with pytest.raises(NotConverged, match="no convergence in 2 rounds"):
        run_study(logistic_cohort(9, 3), "slope", max_rounds=2)


def test_separated_data_does_not_converge() -> None:
    full = logistic_cohort(9, 3)
    evidence = full.take(np.flatnonzero(full.site != "site-00"))  # two sites with similar risks
    risk = evidence.predicted["risk_6y"]
    y = (risk > np.median(risk)).astype(np.int64)  # the outcome is exactly "risk above the median"
    time = np.where(y == 1, 100.0, 3000.0)
    separated = type(evidence)(evidence.kind, evidence.horizons, evidence.predicted, time, y, evidence.site)
    with pytest.raises(NotConverged):
        run_study(separated, "slope")


def test_non_finite_values_never_travel() -> None:
    with pytest.raises(plans.FederationError, match="finite"):
        plans.digest({"format": plans.MESSAGE_FORMAT, "x": [1.0, float("nan")]})
    with pytest.raises(plans.FederationError, match="finite"):
        plans.parse(b'{"payload": {"x": NaN}, "key_id": "k", "signature": "s"}', "upload")
    with pytest.raises(plans.FederationError, match="at most"):
        plans.parse(b" " * (plans.MAX_DOCUMENT_BYTES + 1), "upload")
