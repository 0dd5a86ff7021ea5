"""Seeded multi-site cohorts and an in-process study runner for the federation tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kgrid_py.curation.signing import TrustedKey, key_id
from kgrid_py.learning import federation as fd
from kgrid_py.learning.recalibration import Evidence

S0_NA = {2: 0.9750, 5: 0.9240}
S0_NON_NA = {2: 0.9832, 5: 0.9365}
HORIZONS = {"risk_2y": 2 * 365.25, "risk_5y": 5 * 365.25}
KO = {"id": "kfre", "version": "1.0.0", "content_digest": "d" * 64}


def _weibull(s0: dict[int, float]) -> tuple[float, float]:
    k = float(np.log(np.log(s0[5]) / np.log(s0[2])) / np.log(2.5))
    return k, float(-np.log(s0[2]) / 2**k)


def _concat(kind: str, horizons: dict[str, float], parts: list[tuple[Any, ...]]) -> Evidence:
    return Evidence(
        kind,  # type: ignore[arg-type]
        dict(horizons),
        {o: np.concatenate([p[0][o] for p in parts]) for o in horizons},
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.concatenate([p[3] for p in parts]),
    )


def sizes(n_sites: int) -> list[int]:
    """Site 0 has 60 patients (the smallest the plan admits); the rest 300 to 1,500."""
    return [60, *[300 + 150 * i for i in range(1, n_sites)]]


def tte_cohort(seed: int, n_sites: int, slope: float = 0.8) -> Evidence:
    """KO risks with KFRE's North-American baseline; events from the non-NA baseline and ``slope``.

    Site 0 has 60 high-risk patients (mean LP 2: 10 to 30 events); whole days, so times tie.
    """
    rng = np.random.default_rng(seed)
    k, rho = _weibull(S0_NON_NA)
    parts = []
    for i, n in enumerate(sizes(n_sites)):
        lp = np.clip(rng.normal(2.0 if i == 0 else 0.2 * (i % 3), 1.3, n), -5.0, 3.0)
        predicted = {f"risk_{h}y": -np.expm1(np.exp(lp) * np.log(S0_NA[h])) for h in (2, 5)}
        t1 = (-np.log(rng.uniform(size=n)) / (rho * np.exp(slope * lp))) ** (1 / k)
        stacked = np.column_stack([rng.uniform(1.0, 7.0, n), t1, rng.exponential(60.0 if i == 0 else 20.0, n)])
        cause = np.argmin(stacked, axis=1)
        days = np.ceil(stacked[np.arange(n), cause] * 365.25)
        parts.append((predicted, days, cause, np.full(n, f"site-{i:02d}")))
    return _concat("time-to-event", HORIZONS, parts)


def logistic_cohort(seed: int, n_sites: int, a: float = 0.4, b: float = 0.8) -> Evidence:
    """Logistic KO risks; outcomes by 6 years from logit p' = a + b·logit p; 10 % lost early (not at site 0)."""
    rng = np.random.default_rng(seed)
    horizon = 6 * 365.25
    parts = []
    for i, n in enumerate(sizes(n_sites)):
        lp = rng.normal(-0.8 if i == 0 else -2.5 + 0.2 * (i % 4), 1.1, n)
        p = 1.0 / (1.0 + np.exp(-lp))
        y = rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-(a + b * lp)))
        time = np.where(y, rng.uniform(10, horizon, n), horizon + rng.uniform(0, 400, n))
        lost = (rng.uniform(size=n) < (0.1 if i else 0.0)) & ~y  # site 0 keeps its 60
        time = np.where(lost, rng.uniform(10, horizon - 1, n), time)
        parts.append(({"risk_6y": p}, time, y.astype(np.int64), np.full(n, f"site-{i:02d}")))
    return _concat("logistic", {"risk_6y": horizon}, parts)


@dataclass
class Network:
    """A coordinator key, one key per site, and the trust map everyone shares."""

    coordinator: Ed25519PrivateKey
    keys: dict[str, Ed25519PrivateKey]
    trusted: dict[str, TrustedKey]

    @classmethod
    def of(cls, sites: list[str]) -> Network:
        coordinator = Ed25519PrivateKey.generate()
        keys = {s: Ed25519PrivateKey.generate() for s in sites}
        trusted = {
            key_id(k.public_key()): TrustedKey(key_id(k.public_key()), name, k.public_key())
            for name, k in [("coordinator", coordinator), *keys.items()]
        }
        return cls(coordinator, keys, trusted)

    def site_keys(self) -> dict[str, str]:
        return {s: key_id(k.public_key()) for s, k in self.keys.items()}


def split(evidence: Evidence) -> dict[str, Evidence]:
    return {s: evidence.take(np.flatnonzero(evidence.site == s)) for s in sorted(set(map(str, evidence.site)))}


def run_study(
    evidence: Evidence, method: str, network: Network | None = None, **plan_options: Any
) -> tuple[fd.Final, list[dict[str, Any]], list[list[dict[str, Any]]], Network]:
    """Run a whole study in process: (final, plans, messages per round, network)."""
    by_site = split(evidence)
    network = network or Network.of(list(by_site))
    document = fd.new_plan(
        ko=KO,
        function="four-variable",
        kind=evidence.kind,
        method=method,
        horizons=evidence.horizons,
        sites=network.site_keys(),
        private_key=network.coordinator,
        **plan_options,
    )
    plans = [fd.verify_plan(document, network.trusted)]
    messages: list[list[dict[str, Any]]] = []
    sums = []
    while True:
        plan = plans[-1]
        docs = [
            fd.site_message(plan, rows, site, network.keys[site], KO["content_digest"])
            for site, rows in by_site.items()
        ]
        messages.append(docs)
        sums.append(fd.combine(plan, docs, network.trusted)[0])
        result = fd.advance(plans, sums)
        if isinstance(result, fd.Final):
            return result, plans, messages, network
        plans.append(fd.verify_plan(fd.next_plan(plan, *result, network.coordinator), network.trusted))
