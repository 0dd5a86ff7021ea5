"""A site's federation summary over N captured calls with outcomes (issue 15's goal: 1,000,000 in < 10 s).

Builds (once, cached) a SQLite capture store with N successful KFRE calls at one site, one subject
each, and an outcome row per subject; then times what ``kgrid federate site --store`` does: read the
calls and outcomes and link them (:func:`evidence_from_store`), and compute + sign the message for a
Newton round (stratified Cox sums) and for a baseline round (grid sums). Risks are simulated, not
from the KO (building the store is not what is measured).

Usage: python benchmarks/federation_site_speed.py [N] [STORE_PATH]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import kgrid_py
from kgrid_py.curation.signing import key_id
from kgrid_py.learning import federation as fd
from kgrid_py.learning.ids import new_id
from kgrid_py.learning.outcomes import _insert_new
from kgrid_py.learning.store import COLUMNS, CaptureStore
from kgrid_py.learning.store_evidence import evidence_from_store

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
path = Path(sys.argv[2] if len(sys.argv) > 2 else f"/tmp/kgrid-federation-bench-{n}.sqlite3")
url = f"sqlite:///{path}"
ko = kgrid_py.load("kfre@1.0.0", shelf="knowledge_objects")
function = "four-variable"
kind = "time-to-event"
horizons = {h.output: float(h.days) for h in ko.function(function).outcome.horizons}  # type: ignore[union-attr]

if not path.exists():
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    lp = rng.normal(0.0, 1.3, n)
    risk2, risk5 = -np.expm1(np.exp(lp) * np.log(0.975)), -np.expm1(np.exp(lp) * np.log(0.924))
    day0 = dt.date(2020, 1, 1)
    NOON_US = int(dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC).timestamp() * 1e6)
    offsets = rng.integers(0, 366, n)
    follow = rng.integers(30, 7 * 365, n)
    event = rng.uniform(size=n) < 1.8 * risk5 * np.minimum(follow / 1826.0, 1.0)
    with CaptureStore.open(url) as store:
        for lo in range(0, n, 100_000):
            rows = []
            for i in range(lo, min(n, lo + 100_000)):
                ts = (
                    int(dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC).timestamp() * 1e6) + int(offsets[i]) * 86_400_000_000
                )
                record = {
                    "id": new_id(), "ts_us": ts, "site": "bench", "channel": "batch", "caller": "bench",
                    "ko_id": "kfre", "version": "1.0.0", "content_digest": "0" * 64, "model_digest": "0" * 64,
                    "function": function, "inputs_received": "{}", "inputs_used": "{}", "warnings": "[]",
                    "status": "ok", "latency_us": 80, "subject_key": f"k{i:08d}",
                    "outputs": json.dumps({"risk_2y": float(risk2[i]), "risk_5y": float(risk5[i])}), "error": None,
                }  # fmt: skip
                rows.append(tuple(record[c] for c in COLUMNS))
            store.write_rows(rows)
        with store.engine.connect() as conn, conn.begin():
            outcome_rows = []
            for i in range(n):
                end = (day0 + dt.timedelta(days=int(offsets[i] + follow[i]))).isoformat()
                outcome_rows.append(
                    {
                        "id": new_id(), "site": "bench", "subject_key": f"k{i:08d}", "outcome": "kidney_failure",
                        "event": int(event[i]), "event_date": end if event[i] else None, "followup_date": end,
                        "competing_event": 0, "competing_date": None, "value": None, "value_date": None,
                        "source": "bench", "row_digest": f"{i:064x}", "imported_at_us": 0,
                    }
                )  # fmt: skip
            _insert_new(conn, outcome_rows)
    print(f"built {n:,} calls + outcomes in {time.perf_counter() - start:.0f} s ({path})")

coordinator, site_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
identity = {"id": "kfre", "version": "1.0.0", "content_digest": ko.content_digest}
sites = {"bench": key_id(site_key.public_key())}
common = dict(ko=identity, function=function, kind=kind, horizons=horizons, sites=sites, private_key=coordinator)
start, cpu = time.perf_counter(), time.process_time()
with CaptureStore.open(url) as store:
    evidence = evidence_from_store(store, ko, function, "bench", kind, horizons)  # type: ignore[arg-type]
read_s, read_cpu = time.perf_counter() - start, time.process_time() - cpu
timings = {}
for method in ("slope", "intercept"):  # slope: a Newton round; intercept: the baseline (grid) round
    plan = fd.new_plan(method=method, **common)["payload"]  # type: ignore[arg-type]
    t = time.perf_counter()
    message = fd.site_message(plan, evidence, "bench", site_key, ko.content_digest)
    timings[plan["phase"]] = time.perf_counter() - t
size = len(json.dumps(message))
print(
    f"{evidence.n:,} linked calls: read+link {read_s:.2f} s ({read_cpu:.2f} s CPU), "
    f"newton-round message {timings['newton']:.2f} s, "
    f"baseline-round message {timings['baseline']:.2f} s; "
    f"total (read + baseline) {read_s + timings['baseline']:.2f} s; "
    f"message {size:,} bytes; load average {os.getloadavg()}"
)
