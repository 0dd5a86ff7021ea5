"""Federated recalibration: sites send sums at the plan's parameters, the coordinator takes Newton steps.

A study is a chain of signed round plans (:mod:`kgrid_py.learning.plans`). Round r's plan holds the
current parameters θ_r; each site answers with its counts and the gradient and Hessian of its
log-likelihood at θ_r (:mod:`kgrid_py.learning.site_summary`); the coordinator checks every message
(signature by the site's key, study, round, plan digest, echoed θ, KO digest, one per site), adds
them (``math.fsum``, sites in name order) and steps:

- **newton** rounds (logistic a or a, b; the Cox slope b): accept θ_r if ℓ did not fall below the
  best so far, then θ_{r+1} = θ_r − H⁻¹g (closed-form 1×1 / 2×2 solve); a fall halves the last step
  instead (a rejected step costs a round). When the step is below 1e-8·(1 + |θ|), the estimate is
  θ_r − H⁻¹g: Newton converges quadratically, so it is the pooled maximum to ~1e-16.
- a **baseline** round (time to event) at the final b collects the grid sums for a_h; for the
  ``intercept`` method (b = 1) it is the only round.

Everything after plan 1 is a function of the stored messages, so :func:`replay` recomputes every
plan's θ and the estimate, bit for bit, from the mailbox. More than ``max_rounds`` rounds, too many
halvings or a singular Hessian raise :class:`~kgrid_py.learning.recalibration.NotConverged`.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kgrid_py import __version__
from kgrid_py.curation.signing import TrustedKey, key_id
from kgrid_py.learning.plans import MESSAGE_FORMAT, PLAN_FORMAT, FederationError, digest, sign, verify
from kgrid_py.learning.recalibration import (
    Evidence,
    NotConverged,
    Update,
    cloglog,
    fit_cox_slope,
    fit_logistic,
)
from kgrid_py.learning.site_summary import (
    MONTH_DAYS,
    counts,
    cox_statistics,
    grid_edges,
    logistic_statistics,
    pwe_statistics,
)

__all__ = [
    "Final",
    "MissingMessages",
    "check_message",
    "combine",
    "new_plan",
    "pooled_fit",
    "replay",
    "site_message",
    "verify_plan",
    "walk",
]

STEP_TOLERANCE = 1e-8
MAX_HALVINGS = 30
DEFAULT_MINIMUM = {"patients": 50, "events": 10}


class MissingMessages(FederationError):
    """Some sites have not answered this round yet: wait (the mailbox keeps the study's state)."""

    def __init__(self, round_: int, missing: list[str]) -> None:
        super().__init__(f"round {round_}: waiting for {len(missing)} site(s): {', '.join(missing)}")
        self.round = round_
        self.missing = missing


@dataclass(frozen=True)
class Final:
    """The converged update and how it was reached."""

    update: Update
    rounds: int
    final_step: list[float]
    round_records: list[dict[str, Any]] = field(default_factory=list)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _start(kind: str, method: str) -> tuple[str, list[str], list[float]]:
    """(first phase, parameter names, start values): the original model is the start."""
    if kind == "logistic":
        return ("newton", ["a"], [0.0]) if method == "intercept" else ("newton", ["a", "b"], [0.0, 1.0])
    return ("baseline", [], []) if method == "intercept" else ("newton", ["b"], [1.0])


def new_plan(
    *,
    ko: dict[str, str],
    function: str,
    kind: str,
    method: str,
    horizons: dict[str, float],
    sites: dict[str, str],
    private_key: Ed25519PrivateKey,
    minimum: dict[str, int] | None = None,
    max_rounds: int = 25,
    grid_days: float = MONTH_DAYS,
    study: str | None = None,
    start: list[float] | None = None,
) -> dict[str, Any]:
    """Round 1's signed plan. ``ko`` is {id, version, content_digest}; ``sites`` maps site -> key id.

    ``start`` replaces the original model's parameters as θ_1 (e.g. a lead site's estimate for ODAL).
    """
    if method not in ("intercept", "slope"):
        raise FederationError(f"method {method!r}: a federated study fits 'intercept' or 'slope'")
    if kind not in ("logistic", "time-to-event"):
        raise FederationError(f"kind {kind!r}: expected 'logistic' or 'time-to-event'")
    if not sites:
        raise FederationError("a study needs at least one site")
    if kind == "logistic" and len(horizons) != 1:
        raise FederationError("a logistic KO is recalibrated at exactly one horizon output")
    if not 1 <= max_rounds <= 100:
        raise FederationError(f"max_rounds {max_rounds}: expected 1 to 100")
    phase, names, values = _start(kind, method)
    if start is not None:
        if len(start) != len(names) or not all(math.isfinite(v) for v in start):
            raise FederationError(f"start {start!r}: expected {len(names)} finite value(s) for {names}")
        values = [float(v) for v in start]
    payload = {
        "format": PLAN_FORMAT,
        "study": study or uuid.uuid4().hex,
        "round": 1,
        "phase": phase,
        "ko": {k: ko[k] for k in ("id", "version", "content_digest")},
        "function": function,
        "kind": kind,
        "method": method,
        "horizons": {k: float(v) for k, v in horizons.items()},
        "grid": grid_edges(horizons, grid_days) if kind == "time-to-event" else None,
        "sites": dict(sorted(sites.items())),
        "minimum": dict(minimum or DEFAULT_MINIMUM),
        "max_rounds": max_rounds,
        "theta": {"names": names, "values": values},
        "previous": None,
        "coordinator": key_id(private_key.public_key()),
        "created": _now(),
    }
    return sign(payload, private_key)


def verify_plan(document: dict[str, Any], trusted: dict[str, TrustedKey]) -> dict[str, Any]:
    """The plan's payload once its signature verifies with a trusted coordinator key."""
    verify(document, trusted, document["payload"].get("coordinator"), "plan")
    payload = document["payload"]
    if payload.get("format") != PLAN_FORMAT:
        raise FederationError(f"not a plan: format {payload.get('format')!r}")
    return payload


def site_message(
    plan: dict[str, Any],
    evidence: Evidence,
    site: str,
    private_key: Ed25519PrivateKey,
    ko_digest: str,
    previous: str | None = None,
) -> dict[str, Any]:
    """The site's signed answer to ``plan`` (a verified payload); refuses below the minimums."""
    if site not in plan["sites"]:
        raise FederationError(f"site {site!r} is not in this study (sites: {', '.join(plan['sites'])})")
    if key_id(private_key.public_key()) != plan["sites"][site]:
        raise FederationError(f"site {site!r}: this key is not the one the plan names for the site")
    if ko_digest != plan["ko"]["content_digest"]:
        raise FederationError(
            f"{plan['ko']['id']}@{plan['ko']['version']} here has content digest {ko_digest}, the plan's is "
            f"{plan['ko']['content_digest']}: the KO has changed since the plan; nothing sent"
        )
    if evidence.kind != plan["kind"] or sorted(evidence.horizons) != sorted(plan["horizons"]):
        raise FederationError("the site's evidence is not for this plan's outcome kind and horizons")
    tally = counts(evidence, plan["minimum"])
    theta = plan["theta"]["values"]
    statistics: dict[str, Any]
    if plan["kind"] == "logistic":
        statistics = logistic_statistics(evidence, plan["method"], theta)
    else:
        b = theta[0] if theta else 1.0
        statistics = cox_statistics(evidence, b)
        if plan["phase"] == "baseline":
            statistics["baseline"] = pwe_statistics(evidence, b, plan["grid"])
    payload = {
        "format": MESSAGE_FORMAT,
        "study": plan["study"],
        "round": plan["round"],
        "plan": digest(plan),
        "site": site,
        "ko_digest": ko_digest,
        "theta": plan["theta"],
        "counts": tally,
        "statistics": statistics,
        "previous": previous,
        "software": f"kgrid-py {__version__}",
        "created": _now(),
    }
    return sign(payload, private_key)


def check_message(plan: dict[str, Any], document: dict[str, Any], trusted: dict[str, TrustedKey]) -> dict[str, Any]:
    """The message's payload once it is shown to answer exactly this plan, signed by its site's key."""
    payload = document["payload"]
    site = payload.get("site")
    if payload.get("format") != MESSAGE_FORMAT:
        raise FederationError(f"not a message: format {payload.get('format')!r}")
    if site not in plan["sites"]:
        raise FederationError(f"message from {site!r}, which is not a site of this study")
    what = f"message from site {site!r}"
    verify(document, trusted, plan["sites"][site], what)
    if payload.get("study") != plan["study"]:
        raise FederationError(f"{what} is for study {payload.get('study')!r}, not {plan['study']!r}")
    if payload.get("round") != plan["round"] or payload.get("plan") != digest(plan):
        raise FederationError(
            f"{what} answers round {payload.get('round')!r} (plan {str(payload.get('plan'))[:12]}), not round "
            f"{plan['round']} (plan {digest(plan)[:12]}): a replayed or stale message"
        )
    if payload.get("theta") != plan["theta"]:
        raise FederationError(f"{what}: its parameters are not the plan's")
    if payload.get("ko_digest") != plan["ko"]["content_digest"]:
        raise FederationError(f"{what}: computed with another KO (digest {payload.get('ko_digest')})")
    counts_ = payload.get("counts") or {}
    least = plan["minimum"]["events"]
    if (
        counts_.get("n", 0) < plan["minimum"]["patients"]
        or counts_.get("events", 0) < least
        or counts_.get("non_events", least) < least
    ):
        raise FederationError(f"{what}: {counts_} is below the plan's minimums {plan['minimum']}")
    _check_shapes(plan, payload["statistics"], what)
    return payload


def _check_shapes(plan: dict[str, Any], statistics: Any, what: str) -> None:
    k = len(plan["theta"]["names"]) if plan["kind"] == "logistic" else 1
    try:
        ok = (
            isinstance(statistics["loglik"], float)
            and len(statistics["gradient"]) == k
            and all(len(row) == k for row in statistics["hessian"])
            and len(statistics["hessian"]) == k
        )
        if plan["kind"] == "time-to-event" and plan["phase"] == "baseline":
            j = len(plan["grid"]) - 1
            base = statistics["baseline"]
            ok = ok and len(base["events"]) == j
            for part in ("exposure", "exposure_x"):
                ok = ok and sorted(base[part]) == sorted(plan["horizons"])
                ok = ok and all(len(v) == j for v in base[part].values())
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise FederationError(f"{what}: its statistics do not have the plan's shape")


def _fsum(values: Sequence[Any]) -> Any:
    """Elementwise math.fsum over the sites' values (nested lists / dicts of floats)."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _fsum([v[k] for v in values]) for k in first}
    if isinstance(first, list):
        return [_fsum([v[i] for v in values]) for i in range(len(first))]
    return math.fsum(float(v) for v in values)


def combine(
    plan: dict[str, Any], documents: Sequence[dict[str, Any]], trusted: dict[str, TrustedKey]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summed statistics, per-site lineage rows) for one round; every site must have answered."""
    by_site: dict[str, tuple[dict[str, Any], str]] = {}
    for document in documents:
        payload = check_message(plan, document, trusted)
        site = payload["site"]
        if site in by_site and by_site[site][1] != digest(payload):
            raise FederationError(f"two different messages from site {site!r} for round {plan['round']}")
        by_site[site] = (payload, digest(payload))
    missing = [s for s in plan["sites"] if s not in by_site]
    if missing:
        raise MissingMessages(plan["round"], missing)
    ordered = [by_site[s] for s in sorted(by_site)]
    sums = _fsum([p["statistics"] for p, _ in ordered])
    lineage = [{"site": p["site"], "message_sha256": d, "counts": p["counts"]} for p, d in ordered]
    return sums, lineage


# -- the coordinator's step -------------------------------------------------------------------------


def _solve(hessian: list[list[float]], gradient: list[float]) -> list[float]:
    """H⁻¹g in closed form (1 or 2 parameters), so a replay is bit for bit anywhere."""
    if len(gradient) == 1:
        h = hessian[0][0]
        if not (math.isfinite(h) and h < 0):
            raise NotConverged("the information is not positive (no spread in the predictions?)")
        return [gradient[0] / h]
    (p, q), (r, s) = hessian
    det = p * s - q * r
    if not (math.isfinite(det) and det > 0 and p < 0):
        raise NotConverged("the Hessian is not negative definite (separated data or no spread?)")
    return [(s * gradient[0] - q * gradient[1]) / det, (p * gradient[1] - r * gradient[0]) / det]


@dataclass
class _Walk:
    """The coordinator's Newton state, rebuilt from the rounds (never stored on its own)."""

    best: tuple[list[float], float, list[float], list[list[float]]] | None = None
    halvings: int = 0


def _next(plan: dict[str, Any], sums: dict[str, Any], walk: _Walk) -> tuple[str, list[float]] | Final:
    """('newton' | 'baseline', θ of the next round) or the final update."""
    theta = plan["theta"]["values"]
    if plan["phase"] == "baseline":
        return _baseline_final(plan, sums)
    loglik, gradient, hessian = sums["loglik"], sums["gradient"], sums["hessian"]
    if walk.best is not None and not (math.isfinite(loglik) and loglik >= walk.best[1] - 1e-12 * abs(walk.best[1])):
        walk.halvings += 1
        if walk.halvings > MAX_HALVINGS:
            raise NotConverged(f"round {plan['round']}: no step improves the likelihood")
        best = walk.best[0]
        return "newton", [b + (t - b) / 2.0 for b, t in zip(best, theta, strict=True)]
    walk.best, walk.halvings = (theta, loglik, gradient, hessian), 0
    step = _solve(hessian, gradient)
    moved = [t - s for t, s in zip(theta, step, strict=True)]
    if not all(math.isfinite(v) for v in moved):
        raise NotConverged(f"round {plan['round']}: the Newton step is not finite")
    if max(map(abs, step)) < STEP_TOLERANCE * (1.0 + max(map(abs, theta))):
        if plan["kind"] == "logistic":
            cov = np.linalg.inv(-np.array(hessian))
            names = plan["theta"]["names"]
            update = Update("logistic", plan["method"], names, np.array(moved), cov, loglik, plan["round"])
            return Final(update, plan["round"], step)
        return "baseline", moved
    return "newton", moved


def _baseline_final(plan: dict[str, Any], sums: dict[str, Any]) -> Final:
    b = plan["theta"]["values"][0] if plan["theta"]["values"] else 1.0
    information = -sums["hessian"][0][0]
    var_b = 1.0 / information if plan["method"] == "slope" else 0.0
    outputs = sorted(plan["horizons"], key=lambda o: (plan["horizons"][o], o))
    update = baseline_update(
        plan["method"], outputs, plan["horizons"], plan["grid"], sums["baseline"], b, var_b, sums["loglik"]
    )
    step = [sums["gradient"][0] / -information] if plan["method"] == "slope" else []
    return Final(
        Update(
            update.kind, update.method, update.names, update.estimates, update.covariance, update.loglik, plan["round"]
        ),
        plan["round"],
        step,
    )


def baseline_update(
    method: str,
    outputs: list[str],
    horizons: dict[str, float],
    grid: list[float],
    base: dict[str, Any],
    b: float,
    var_b: float,
    loglik: float,
) -> Update:
    """a_h = ln Σ_{e_j <= h} Δ_j·D_j/E_hj from pooled grid sums, with its covariance (see site_summary)."""
    edges = np.asarray(grid)
    widths = np.diff(edges)
    deaths = np.asarray(base["events"], dtype=np.float64)
    hats, q, terms, upto = [], [], [], []
    for o in outputs:
        exposure = np.asarray(base["exposure"][o], dtype=np.float64)
        exposure_x = np.asarray(base["exposure_x"][o], dtype=np.float64)
        within = edges[1:] <= horizons[o] + 1e-9
        if np.any((deaths > 0) & (exposure <= 0)):
            raise FederationError(f"{o}: events in a grid interval with no exposure")
        rate = np.divide(deaths, exposure, out=np.zeros_like(deaths), where=exposure > 0)
        hat = float(np.sum((rate * widths)[within]))
        if hat <= 0:
            raise FederationError(f"{o}: no outcome event within {horizons[o]:g} days across the sites")
        hats.append(hat)
        term = np.divide(widths, exposure, out=np.zeros_like(widths), where=exposure > 0)  # dĤ/dD_j
        terms.append(term)
        upto.append(within)
        dq = np.divide(deaths * widths * exposure_x, exposure**2, out=np.zeros_like(widths), where=exposure > 0)
        q.append(-float(np.sum(dq[within])) if method == "slope" else 0.0)
    k = len(outputs)
    cov_h = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            shared = upto[i] & upto[j]
            cov_h[i, j] = float(np.sum((deaths * terms[i] * terms[j])[shared])) + q[i] * q[j] * var_b
    jac = np.diag(1.0 / np.array(hats))
    names = [f"a[{o}]" for o in outputs]
    estimates = np.log(np.array(hats))
    cov = jac @ cov_h @ jac
    if method == "slope":
        cross = np.array(q) / np.array(hats) * var_b
        cov = np.block([[cov, cross[:, None]], [cross[None, :], np.array([[var_b]])]])
        names.append("b")
        estimates = np.append(estimates, b)
    return Update("time-to-event", method, names, estimates, cov, loglik)  # type: ignore[arg-type]


def advance(plans: Sequence[dict[str, Any]], round_sums: Sequence[dict[str, Any]]) -> tuple[str, list[float]] | Final:
    """Replay the walk over rounds 1..r (sums per round); what comes after round r."""
    walk = _Walk()
    result: tuple[str, list[float]] | Final = ("newton", [])
    for plan, sums in zip(plans, round_sums, strict=True):
        result = _next(plan, sums, walk)
    if not isinstance(result, Final) and plans[-1]["round"] >= plans[-1]["max_rounds"]:
        raise NotConverged(
            f"no convergence in {plans[-1]['max_rounds']} rounds (the plan's maximum); no version is written"
        )
    return result


def next_plan(
    previous: dict[str, Any], phase: str, theta: list[float], private_key: Ed25519PrivateKey
) -> dict[str, Any]:
    """Round r+1's signed plan, chained to round r's."""
    if key_id(private_key.public_key()) != previous["coordinator"]:
        raise FederationError("only the study's coordinator key may sign its next plan")
    payload = {
        **previous,
        "round": previous["round"] + 1,
        "phase": phase,
        "theta": {"names": previous["theta"]["names"], "values": theta},
        "previous": digest(previous),
        "created": _now(),
    }
    return sign(payload, private_key)


def walk(
    plans: Sequence[dict[str, Any]], messages: Sequence[Sequence[dict[str, Any]]], trusted: dict[str, TrustedKey]
) -> tuple[tuple[str, list[float]] | Final, list[dict[str, Any]]]:
    """Re-verify every round and recompute every plan's θ from the stored messages.

    ``plans[i]`` is round i+1's verified payload, ``messages[i]`` its documents. Returns what comes
    after the last round (the next phase and θ, or the final fit) and the lineage of each round.
    Raises :class:`FederationError` if a stored plan's chain or θ differs from the recomputation,
    and :class:`MissingMessages` while a site has not answered the last round.
    """
    sums, records = [], []
    result: tuple[str, list[float]] | Final = ("newton", [])
    for i, plan in enumerate(plans):
        if plan["round"] != i + 1 or (i and plan["previous"] != digest(plans[i - 1])):
            raise FederationError(f"plan {i + 1} is not chained to plan {i}")
        if i and {k: v for k, v in plan.items() if k not in _PER_ROUND} != {
            k: v for k, v in plans[0].items() if k not in _PER_ROUND
        }:
            raise FederationError(f"plan {i + 1} changes the study's terms (KO, sites, method, minimums...)")
        total, lineage = combine(plan, messages[i], trusted)
        sums.append(total)
        records.append({"round": plan["round"], "phase": plan["phase"], "theta": plan["theta"], "sites": lineage})
        result = advance(plans[: i + 1], sums)
        expected = None if i + 1 == len(plans) else (plans[i + 1]["phase"], plans[i + 1]["theta"]["values"])
        if expected is not None and (isinstance(result, Final) or tuple(result) != expected):
            raise FederationError(f"plan {i + 2}'s parameters are not what round {i + 1}'s messages give")
    return result, records


_PER_ROUND = ("round", "phase", "theta", "previous", "created")


def replay(
    plans: Sequence[dict[str, Any]], messages: Sequence[Sequence[dict[str, Any]]], trusted: dict[str, TrustedKey]
) -> Final:
    """The converged fit recomputed from the stored plans and messages, bit for bit (see :func:`walk`)."""
    result, records = walk(plans, messages, trusted)
    if not isinstance(result, Final):
        raise FederationError(f"the study has not converged after round {len(plans)}")
    return Final(result.update, result.rounds, result.final_step, records)


# -- the pooled single-process reference ----------------------------------------------------------


def pooled_fit(evidence: Evidence, method: str, grid: list[float] | None = None) -> Update:
    """The same model fitted on the pooled rows in one process (Cox slope stratified by site)."""
    if evidence.kind == "logistic":
        offset, y = evidence.binary()
        return fit_logistic(offset, y, method)  # type: ignore[arg-type]
    edges = grid or grid_edges(evidence.horizons)
    x = cloglog(evidence.predicted[evidence.outputs[0]])
    if method == "slope":
        b, var_b, loglik, _ = fit_cox_slope(evidence.time, evidence.cause == 1, x, evidence.site)
    else:
        b, var_b, loglik = 1.0, 0.0, 0.0
    base = pwe_statistics(evidence, b, edges)
    return baseline_update(method, evidence.outputs, evidence.horizons, edges, base, b, var_b, loglik)
