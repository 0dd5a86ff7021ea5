"""`kgrid monitor` on 1,000,000 captured KFRE calls with linked outcomes: wall time and peak memory.

    .venv/bin/python benchmarks/monitor_scale.py [--calls 1000000] [--store /tmp/kgrid-monitor-1m.sqlite3]

Builds the store once (the synthetic cohort of kgrid_py.learning.cohort, two sites; not timed),
then times the full report (store read, linkage, every metric at both horizons, JSON and HTML) in
a fresh process and reads that process's peak RSS and that of the largest site worker process
monitor() started (their sum bounds the run's memory). Target (issue 14): < 20 s and < 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SECRET = "b" * 48


def build(url: str, calls: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from kgrid_py.learning.cohort import OUTCOME_FILE_COLUMNS, Site, call_records, kfre_cohort, outcome_rows
    from kgrid_py.learning.outcomes import import_rows, rows_from_table
    from kgrid_py.learning.store import CaptureStore
    from kgrid_py.learning.subjects import SubjectKeyer

    keyer = SubjectKeyer(SECRET)
    sites = (Site("calibrated", calls // 2), Site("underpredicted", calls - calls // 2, risk_ratio=2.0))
    cohort = kfre_cohort(seed=1, sites=sites)
    columns = OUTCOME_FILE_COLUMNS
    with CaptureStore.open(url) as store:
        for start in range(0, cohort.num_rows, 100_000):
            store.write_calls(call_records(cohort.slice(start, 100_000), keyer))
        for site in sites:
            part = cohort.filter(pc.equal(cohort.column("site"), site.name))
            rows = rows_from_table(pa.table(outcome_rows(part)), columns)
            import_rows(store, rows, site=site.name, outcome="kidney_failure", keyer=keyer, source="benchmark")


def measure(url: str, out: Path) -> None:
    import kgrid_py
    from kgrid_py.learning.monitor import monitor
    from kgrid_py.learning.report import render_html
    from kgrid_py.learning.store import CaptureStore

    start, cpu = time.perf_counter(), time.process_time()
    ko = kgrid_py.load("kfre@1")
    with CaptureStore.open(url) as store:
        report = monitor(store, ko.id, ko.version, ko.metadata.function("four-variable"))
    computed, computed_cpu = time.perf_counter() - start, time.process_time() - cpu
    (out / "report.json").write_text(json.dumps(report, allow_nan=False))
    (out / "report.html").write_text(render_html(report))
    total = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # monitor() computes sites in child processes on a large store: their CPU and memory count too
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    calls = sum(s["calls"] for s in report["sites"])
    print(
        json.dumps(
            {
                "calls": calls,
                "report_s": round(computed, 2),
                "report_cpu_s": round(computed_cpu, 2),  # all threads: the figure a busy machine inflates least
                "workers_cpu_s": round(children.ru_utime + children.ru_stime, 2),
                "with_json_html_s": round(total, 2),
                "peak_rss_mb": round(peak_mb),
                # the largest worker's peak; with this process's, an upper bound of the run's memory
                "worker_peak_rss_mb": round(children.ru_maxrss / 1024),
                "alerts": len(report["alerts"]),
                "load_average": os.getloadavg(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--store", default="/tmp/kgrid-monitor-1m.sqlite3")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    url = f"sqlite:///{args.store}"
    out = Path(args.store).with_suffix(".out")
    if args.measure:
        out.mkdir(exist_ok=True)
        measure(url, out)
        return
    if not Path(args.store).exists():
        began = time.perf_counter()
        build(url, args.calls)
        print(f"built {args.calls} calls in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    subprocess.run([sys.executable, __file__, "--store", args.store, "--measure"], check=True, env=os.environ)


if __name__ == "__main__":
    main()
