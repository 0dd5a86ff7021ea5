"""Helpers for the learning loop's end-to-end test (issue 15): sites, patients, their truth, the CLI.

A site is a shelf, a capture store, a subject secret, a key pair and its own ``kgrid serve``
process; the coordinator is one more activator that serves the federation mailbox. Patients come
from a nephrology clinic (CKD stages 3 to 5, much albuminuria, so events are frequent enough for a
few hundred patients to show an O:E alert). Their outcomes follow a miscalibrated KFRE: the truth
is the parent version's Cox form with its baseline hazard multiplied by θ (the true 5-year baseline
risk is ``RISK_RATIO`` times the North-American one), simulated by
:func:`kgrid_py.learning.cohort.simulate_times` from the parent's own risks, computed here in
process: the truth never depends on what a site's activator serves.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from activator_server import Server

from kgrid_py.ko import KnowledgeObject
from kgrid_py.learning.cohort import Site, simulate_times

__all__ = [
    "DEATH_RATE",
    "RISK_RATIO",
    "CliRun",
    "SiteProcess",
    "call_each",
    "clinic_patients",
    "kgrid",
    "post_outcomes",
    "stop_commands",
    "true_outcomes",
]

RISK_RATIO = 2.0
DEATH_RATE = 0.02  # per year (see the test's docstring: why not higher)
CLI_TIMEOUT_S = 120
HTTP_TIMEOUT_S = 30.0


@dataclass
class SiteProcess:
    """One site: what its activator serves and captures into, and who it is."""

    name: str
    root: Path
    shelf: Path
    store: str
    secret: Path
    server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None, f"site {self.name} has no running activator"
        return self.server.url


def clinic_patients(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """KFRE four-variable inputs of ``n`` nephrology-clinic patients (eGFR 10-59, uACR in mg/g)."""
    age = np.clip(rng.normal(66, 12, n), 20, 95).round(0)
    male = rng.uniform(size=n) < 0.56
    egfr = np.clip(rng.normal(26, 9, n), 10, 59).round(0)
    uacr = np.clip(np.exp(rng.normal(6.2, 1.3, n)), 1, 5000).round(1)
    return [
        {"age": int(age[i]), "sex": "male" if male[i] else "female", "egfr": int(egfr[i]), "uacr": float(uacr[i])}
        for i in range(n)
    ]


def true_outcomes(
    rng: np.random.Generator,
    parent: KnowledgeObject,
    patients: Sequence[dict[str, Any]],
    ids: Sequence[str],
    site: str,
    start: dt.date,
) -> list[dict[str, Any]]:
    """Outcome rows for ``POST /outcomes``: times from the miscalibrated truth, dated from ``start``."""
    columns = {name: [p[name] for p in patients] for name in ("age", "sex", "egfr", "uacr")}
    risk_5y = np.asarray(parent.call_batch("four-variable", columns)["risk_5y"], dtype=np.float64)
    years, cause = simulate_times(rng, risk_5y, Site(site, len(patients), RISK_RATIO, death_rate=DEATH_RATE))
    rows = []
    for patient, y, c in zip(ids, years, cause, strict=True):
        end = (start + dt.timedelta(days=max(1, int(np.ceil(y * 365.25))))).isoformat()
        row: dict[str, Any] = {"patient_id": patient, "event": int(c == 1), "followup_date": end}
        if c == 1:
            row["event_date"] = end
        if c == 2:
            row |= {"competing_event": 1, "competing_date": end}
        rows.append(row)
    return rows


def call_each(url: str, path: str, patients: Sequence[dict[str, Any]], ids: Sequence[str]) -> list[dict[str, Any]]:
    """The EHR: one request per patient (``X-Subject-Id``), as a real caller would; every answer must be 200."""
    answers = []
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S) as client:
        for body, patient in zip(patients, ids, strict=True):
            answer = client.post(path, json=body, headers={"X-Subject-Id": patient})
            assert answer.status_code == 200, answer.text
            answers.append(answer.json())
    return answers


def post_outcomes(url: str, token: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``POST /outcomes`` for KFRE four-variable (admin role); every row must be stored."""
    answer = httpx.post(
        f"{url}/outcomes?ko=kfre&function=four-variable",
        json={"rows": rows},
        headers={"Authorization": f"Bearer {token}"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    assert report["inserted"] == len(rows) and report["refused"] == 0 and report["unknown_subjects"] == 0, report
    return report


@dataclass
class CliRun:
    """A ``kgrid`` command running as its own process (started at once, awaited with ``wait``)."""

    args: tuple[str, ...]
    process: subprocess.Popen[str]

    def wait(self) -> subprocess.CompletedProcess[str]:
        try:
            out, err = self.process.communicate(timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError(f"kgrid {' '.join(self.args)} ran over {CLI_TIMEOUT_S} s: {err[-2000:]}") from None
        return subprocess.CompletedProcess(self.args, self.process.returncode, out, err)


_STARTED: list[CliRun] = []


def kgrid(*args: str, env: dict[str, str] | None = None) -> CliRun:
    """Start the real ``kgrid`` entry point in a subprocess (several may run at once; see ``stop_commands``)."""
    command = [sys.executable, "-c", "from kgrid_py.cli import main; main()", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    run = CliRun(tuple(args), process)
    _STARTED.append(run)
    return run


def stop_commands() -> None:
    """Kill every ``kgrid`` command this module started that still runs (a failed step leaves none behind)."""
    while _STARTED:
        run = _STARTED.pop()
        if run.process.poll() is None:
            run.process.kill()
        run.process.communicate()
