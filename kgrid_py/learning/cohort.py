"""A seeded, multi-site synthetic cohort with known truth, for testing monitoring end to end.

What it simulates (learning-loop.md §7). Each patient has KFRE-like inputs (age, sex, eGFR, urine
ACR) and the KO's own predicted risks p̂(2 y), p̂(5 y). KFRE's prediction is a Cox model,
p̂(t) = 1 - exp(-H0(t)·e^LP), and a Weibull baseline H0(t) = ρ·t^k through its two North-American
baseline survivals (S0(2) = 0.9750, S0(5) = 0.9240) reproduces both horizons exactly, so the
patient's hazard multiplier is m = -ln(1 - p̂(5 y)) / H0(5). The true time to kidney failure is then

    T1 = (-ln U / (θ·ρ·m^b))^(1/k),   U ~ Uniform(0, 1)

with θ the site's baseline-hazard factor and b its slope. θ = 1, b = 1 is a site where the KO is
well calibrated for the net risk (the risk in a world without death). For a site whose true risk
at 5 years is ``risk_ratio`` times the predicted baseline risk, θ = ln(1 - r(1 - S0(5)))/ln S0(5)
(learning-loop.md: r = 1.5 gives θ = 1.53129). Death competes: T2 ~ Exponential(``death_rate`` per
year). Censoring: C ~ Uniform(``follow_up_years``). Observed time is min(T1, T2, C), cause 1, 2 or 0.

The default sites: ``calibrated`` (θ = 1), ``underpredicted`` (true 5-year baseline risk 2x the
predicted one), and two small sites, ``small-a`` and ``small-b``, with too few events for any metric.
Calls happen on a date in 2020; outcomes are whole days after it, so times tie as real data does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa

from kgrid_py.learning.subjects import SubjectKeyer

__all__ = [
    "DEFAULT_SITES",
    "S0_NA",
    "Site",
    "baseline_hazard_factor",
    "call_records",
    "kfre_cohort",
    "outcome_rows",
    "simulate_times",
    "weibull",
]

S0_NA = {2: 0.9750, 5: 0.9240}
_YEAR = 365.25


@dataclass(frozen=True)
class Site:
    """One simulated site: its size, its truth against the KO, and its follow-up."""

    name: str
    n: int
    risk_ratio: float = 1.0  # true baseline risk at 5 y / the KO's
    slope: float = 1.0
    death_rate: float = 0.05  # per year
    follow_up_years: tuple[float, float] = (1.0, 7.0)


DEFAULT_SITES = (
    Site("calibrated", 4000),
    Site("underpredicted", 4000, risk_ratio=2.0),
    Site("small-a", 30),
    Site("small-b", 25),
)


def weibull(s0: dict[int, float] = S0_NA) -> tuple[float, float]:
    """(k, ρ) of H0(t) = ρ·t^k through S0 at 2 and 5 years."""
    k = float(np.log(np.log(s0[5]) / np.log(s0[2])) / np.log(2.5))
    rho = float(-np.log(s0[2]) / 2**k)
    return k, rho


def baseline_hazard_factor(risk_ratio: float, s0_5: float = S0_NA[5]) -> float:
    """θ such that the true baseline risk at 5 years is ``risk_ratio`` times 1 - S0(5)."""
    return float(np.log(1 - risk_ratio * (1 - s0_5)) / np.log(s0_5))


def simulate_times(rng: np.random.Generator, risk_5y: np.ndarray, site: Site) -> tuple[np.ndarray, np.ndarray]:
    """Observed time in years and cause (0 censored, 1 kidney failure, 2 death) for predicted 5-year risks."""
    k, rho = weibull()
    m = -np.log1p(-risk_5y) / (rho * 5.0**k)
    theta = baseline_hazard_factor(site.risk_ratio)
    u = rng.uniform(size=risk_5y.size)
    t1 = (-np.log(u) / (theta * rho * m**site.slope)) ** (1.0 / k)
    t2 = rng.exponential(1.0 / site.death_rate, size=risk_5y.size)
    c = rng.uniform(*site.follow_up_years, size=risk_5y.size)
    times = np.column_stack([c, t1, t2])
    cause = np.argmin(times, axis=1)
    return times[np.arange(times.shape[0]), cause], cause


def _inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "age": np.clip(rng.normal(68, 12, n), 20, 95).round(0),
        "sex": np.where(rng.uniform(size=n) < 0.56, "male", "female"),
        "egfr": np.clip(rng.normal(36, 11, n), 10, 59).round(0),
        "uacr": np.clip(np.exp(rng.normal(5.0, 1.6, n)), 1, 5000).round(1),
    }


def kfre_cohort(seed: int = 2024, sites: tuple[Site, ...] = DEFAULT_SITES, shelf: str | None = None) -> pa.Table:
    """One row per patient: site, patient_id, call date, the KO's inputs and outputs, and outcome columns.

    Predictions come from the real ``kfre`` KO (four-variable, North American). Outcome columns:
    ``event`` (kidney failure 0/1), ``event_date``, ``death`` (0/1), ``death_date``, ``followup_date``.
    """
    import kgrid_py  # the core; imported here so the module loads without a shelf

    ko = kgrid_py.load("kfre@1", shelf=shelf) if shelf else kgrid_py.load("kfre@1")
    rng = np.random.default_rng(seed)
    parts = []
    for site in sites:
        cols = _inputs(rng, site.n)
        out = ko.call_batch("four-variable", cols)
        risk_5y = np.asarray(out["risk_5y"], dtype=np.float64)
        years, cause = simulate_times(rng, risk_5y, site)
        start = date(2020, 1, 1)
        offsets = rng.integers(0, 366, site.n)
        call_dates = [start + timedelta(days=int(d)) for d in offsets]
        days = np.maximum(np.ceil(years * _YEAR).astype(np.int64), 1)
        end = [cd + timedelta(days=int(d)) for cd, d in zip(call_dates, days, strict=True)]
        parts.append(
            pa.table(
                {
                    "site": [site.name] * site.n,
                    "patient_id": [f"{site.name}-{i:06d}" for i in range(site.n)],
                    "call_date": call_dates,
                    **{name: values for name, values in cols.items()},
                    "risk_2y": np.asarray(out["risk_2y"], dtype=np.float64),
                    "risk_5y": risk_5y,
                    "event": (cause == 1).astype(np.int8),
                    "event_date": [e if c == 1 else None for e, c in zip(end, cause, strict=True)],
                    "death": (cause == 2).astype(np.int8),
                    "death_date": [e if c == 2 else None for e, c in zip(end, cause, strict=True)],
                    "followup_date": end,
                    "time_days": days,
                    "cause": cause.astype(np.int8),
                }
            )
        )
    return pa.concat_tables(parts)


def call_records(cohort: pa.Table, keyer: SubjectKeyer, *, version: str = "1.0.0", refused_every: int = 0) -> list:
    """One captured KFRE call per patient, on its call date at noon UTC (every ``refused_every``-th
    patient also gets a refused call first, for the volume figures)."""
    from kgrid_py.learning.ids import new_id
    from kgrid_py.learning.records import CallRecord

    records = []
    cols = {name: cohort.column(name).to_pylist() for name in cohort.column_names}
    for i in range(cohort.num_rows):
        day = cols["call_date"][i]
        ts_us = int((datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()) * 1_000_000)
        used = {
            "age": cols["age"][i],
            "sex": cols["sex"][i],
            "egfr": cols["egfr"][i],
            "uacr": cols["uacr"][i],
            "region": "north_american",
        }
        common = {
            "site": cols["site"][i],
            "channel": "batch",
            "caller": "cohort",
            "ko_id": "kfre",
            "version": version,
            "content_digest": "0" * 64,
            "model_digest": "0" * 64,
            "function": "four-variable",
            "subject_key": keyer.key(cols["patient_id"][i]),
            "inputs_received": json.dumps(used),
        }
        if refused_every and i % refused_every == 0:
            records.append(
                CallRecord(
                    id=new_id(),
                    ts_us=ts_us - 60_000_000,
                    inputs_used="null",
                    warnings="[]",
                    status="refused",
                    latency_us=50,
                    error="uacr: missing",
                    **common,
                )
            )
        outputs = {"risk_2y": cols["risk_2y"][i], "risk_5y": cols["risk_5y"][i]}
        records.append(
            CallRecord(
                id=new_id(),
                ts_us=ts_us,
                inputs_used=json.dumps(used),
                outputs=json.dumps(outputs),
                warnings="[]",
                status="ok",
                latency_us=80,
                **common,
            )
        )
    return records


# How :func:`outcome_rows`' columns map onto the outcome fields (``rows_from_table``'s ``columns``).
OUTCOME_FILE_COLUMNS = {
    "patient_id": "patient_id",
    "event": "kidney_failure",
    "event_date": "kf_date",
    "followup_date": "last_seen",
    "competing_event": "died",
    "competing_date": "death_date",
}


def outcome_rows(cohort: pa.Table) -> dict[str, list]:
    """The cohort's outcome columns as an outcome file would hold them (patient ids, not keys)."""
    return {
        "patient_id": cohort.column("patient_id").to_pylist(),
        "kidney_failure": cohort.column("event").to_pylist(),
        "kf_date": [d.isoformat() if d else None for d in cohort.column("event_date").to_pylist()],
        "last_seen": [d.isoformat() for d in cohort.column("followup_date").to_pylist()],
        "died": cohort.column("death").to_pylist(),
        "death_date": [d.isoformat() if d else None for d in cohort.column("death_date").to_pylist()],
    }
