"""Capture overhead in the library: added microseconds per KFRE ``ko.call`` and bytes stored per call.

    .venv/bin/python benchmarks/capture_overhead.py [--calls 20000]

Same process, same inputs: calls without capture, then with ``capture=`` (group commit, SQLite
WAL), timing until every record is committed (``flush``), so the writer thread's work is counted.
Bytes per call: the store's size (database + WAL) over the calls stored. (The activator's
throughput at concurrency 32 with capture on vs off is not measured here yet.)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import kgrid_py

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
KFRE = {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}


def _per_call_us(ko: kgrid_py.KnowledgeObject, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        ko.call("four-variable", KFRE, subject="patient-123" if ko.recorder is not None else None)
    if ko.recorder is not None:
        ko.recorder.flush()  # type: ignore[attr-defined]
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "capture.sqlite3"
        plain = kgrid_py.load("kfre@1", shelf=SHELF)
        secret = os.urandom(32).hex().encode()
        url = f"sqlite:///{path}"
        captured = kgrid_py.load("kfre@1", shelf=SHELF, capture=url, site="bench", subject_secret=secret)
        _per_call_us(plain, 500), _per_call_us(captured, 500)  # warm up
        off = min(_per_call_us(plain, args.calls) for _ in range(3))
        on = min(_per_call_us(captured, args.calls) for _ in range(3))
        stored = captured.recorder.store.count_calls()  # type: ignore[union-attr]
        captured.recorder.close()  # type: ignore[union-attr]
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        print(f"library ko.call: {off:.1f} us without capture, {on:.1f} us with, +{on - off:.1f} us per call")
        print(f"stored: {stored} calls, {size / stored:.0f} bytes per call (SQLite file + WAL, indexes included)")


if __name__ == "__main__":
    main()
