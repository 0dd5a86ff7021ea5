"""Capture overhead: the library's added µs per KFRE ``ko.call``, bytes stored per call, and the
activator's KFRE throughput and latency at concurrency 32 with capture on vs off, in the same run.

    .venv/bin/python benchmarks/capture_overhead.py [--calls 20000] [--duration 10] [--no-activator]

Library (same process, same inputs, the best of 3 runs each): calls without capture; with
``capture=`` (group commit, SQLite WAL) timed as the caller sees it (the call returns once its
event is queued); and amortised, timed until every record is committed (``flush``), so the
writer thread's work (JSON, HMAC, ids, inserts) is counted too. Bytes per call: the store's size
(database + WAL, indexes included) over the calls stored. Activator: ``kgrid serve`` (1 worker,
vectors not re-run) with and without ``--capture`` on SQLite, wrk (1 thread, 32 connections)
POSTing the same KFRE body to ``/endpoints/kfre/four-variable``. The load average is printed,
since a shared machine changes every number.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import kgrid_py
from kgrid_py.learning.capture import Capture, keyer_for

ROOT = Path(__file__).resolve().parent.parent
SHELF = ROOT / "knowledge_objects"
KFRE = {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}


def _per_call_us(ko: kgrid_py.KnowledgeObject, calls: int, *, flush: bool) -> float:
    subject = "patient-123" if ko.recorder is not None else None
    start = time.perf_counter()
    for _ in range(calls):
        ko.call("four-variable", KFRE, subject=subject)
    if flush and ko.recorder is not None:
        ko.recorder.flush()  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    if ko.recorder is not None:
        ko.recorder.flush()  # type: ignore[attr-defined]  # the next run starts with an empty queue
    return elapsed / calls * 1e6


def library(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plain = kgrid_py.load("kfre@1", shelf=SHELF)
        url = f"sqlite:///{Path(tmp) / 'capture.sqlite3'}"
        secret = os.urandom(32).hex().encode()
        captured = kgrid_py.load("kfre@1", shelf=SHELF, capture=url, site="bench", subject_secret=secret)
        _per_call_us(plain, 500, flush=False), _per_call_us(captured, 500, flush=True)  # warm up
        off = min(_per_call_us(plain, calls, flush=False) for _ in range(3))
        queued = min(_per_call_us(captured, calls, flush=False) for _ in range(3))
        amortised = min(_per_call_us(captured, calls, flush=True) for _ in range(3))
        # The calling thread alone: the writer does not wake during the loop (an hour's interval),
        # then one flush builds and commits everything; both timed, per call.
        paused = kgrid_py.load("kfre@1", shelf=SHELF)
        paused.recorder = Capture(captured.recorder.store, site="bench", keyer=keyer_for(secret), flush_interval_s=3600)  # type: ignore[union-attr]
        enqueue, writer = float("inf"), float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(calls):
                paused.call("four-variable", KFRE, subject="patient-123")
            middle = time.perf_counter()
            paused.recorder.flush()  # type: ignore[union-attr]
            end = time.perf_counter()
            enqueue, writer = min(enqueue, (middle - start) / calls * 1e6), min(writer, (end - middle) / calls * 1e6)
        paused.recorder.close()  # type: ignore[union-attr]
        stored = captured.recorder.store.count_calls()  # type: ignore[union-attr]
        captured.recorder.close()  # type: ignore[union-attr]
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        print(f"library ko.call: {off:.1f} us without capture")
        print(f"  with capture, as the caller sees it: {queued:.1f} us (+{queued - off:.1f} us)")
        print(f"  with capture, amortised until committed: {amortised:.1f} us (+{amortised - off:.1f} us)")
        print(f"  writer paused: {enqueue:.1f} us per call (+{enqueue - off:.1f} us on the calling thread);")
        print(f"    then the writer's build + commit: {writer:.1f} us per record")
        print(f"  stored: {stored} calls, {size / stored:.0f} bytes per call (SQLite file + WAL, indexes included)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wrk(url: str, duration: int, lua: Path) -> tuple[float, float]:
    """Requests/s and p99 latency (ms) from wrk --latency."""
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{duration}s", "--latency", "-s", str(lua), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return rps, p99


def activator(duration: int) -> None:
    import json

    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        body = json.dumps(KFRE)
        lua.write_text(f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n")
        results = {}
        for label, extra in (("off", []), ("on", ["--capture", f"sqlite:///{Path(tmp) / 'c.sqlite3'}"])):
            port = _free_port()
            args = [sys.executable, "-m", "kgrid_py.cli", "serve", str(SHELF), "--port", str(port), "--workers", "1"]
            args += ["--no-watch", "--no-access-log", "--no-verify-vectors", "--site", "bench", *extra]
            server = subprocess.Popen(
                [ROOT / ".venv/bin/kgrid", *args[3:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                base = f"http://127.0.0.1:{port}"
                for _ in range(600):
                    try:
                        if httpx.get(f"{base}/ready").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2)
                url = f"{base}/endpoints/kfre/four-variable"
                _wrk(url, 2, lua)  # warm up
                results[label] = _wrk(url, duration, lua)
            finally:
                server.terminate()
                server.wait(timeout=30)
        (off_rps, off_p99), (on_rps, on_p99) = results["off"], results["on"]
        print(f"activator KFRE, c=32, {duration} s each: capture off {off_rps:.0f} req/s p99 {off_p99:.1f} ms;")
        print(f"  capture on (SQLite) {on_rps:.0f} req/s p99 {on_p99:.1f} ms: {on_rps / off_rps:.2f}x throughput, ")
        print(f"  p99 {on_p99 - off_p99:+.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--no-activator", action="store_true")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load}, {os.cpu_count()} CPUs")
    library(args.calls)
    if not args.no_activator:
        activator(args.duration)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
