"""Capture overhead: the library's added µs per KFRE ``ko.call``, bytes stored per call, and the
activator's KFRE throughput and latency at concurrency 32 with capture on vs off, in the same run.

    .venv/bin/python benchmarks/capture_overhead.py [--calls 20000] [--blocks 20] [--duration 10] [--no-activator]

Library (same process, same inputs; each configuration in interleaved blocks, the best block
reported with the median block's figure beside it): calls without capture; with
``capture=`` (group commit, SQLite WAL) timed as the caller sees it (the call returns once its
event is queued); and amortised, timed until every record is committed (``flush``), so the
writer thread's work (JSON, HMAC, ids, inserts) is counted too. Bytes per call: the store's size
(database + WAL, indexes included) over the calls stored. Activator: ``kgrid serve`` (1 worker,
vectors not re-run) with and without ``--capture`` on SQLite, wrk (1 thread, 32 connections, then
1) POSTing the same KFRE body to ``/endpoints/kfre/four-variable``; with capture on twice: the
default ``synchronous=normal`` (a tick's records committed on the event loop, no fsync) and
``?synchronous=full`` (every group commit waits for an fsync, on the writer thread). The load average is printed,
since a shared machine changes every number; so are CPU times (the library process's, all threads;
the server's, from /proc), which other processes' load changes far less than wall time.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import kgrid_py
from kgrid_py.learning.capture import Capture, keyer_for

ROOT = Path(__file__).resolve().parent.parent
SHELF = ROOT / "knowledge_objects"
KFRE = {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}


def _per_call_us(ko: kgrid_py.KnowledgeObject, calls: int, *, flush: bool) -> tuple[float, float]:
    """Wall and process CPU (every thread: the writer's too) µs per call."""
    subject = "patient-123" if ko.recorder is not None else None
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        ko.call("four-variable", KFRE, subject=subject)
    if flush and ko.recorder is not None:
        ko.recorder.flush()  # type: ignore[attr-defined]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if ko.recorder is not None:
        ko.recorder.flush()  # type: ignore[attr-defined]  # the next run starts with an empty queue
    return elapsed / calls * 1e6, cpu / calls * 1e6


def _paused_us(ko: kgrid_py.KnowledgeObject, calls: int) -> tuple[float, float, float, float]:
    """The calling thread alone (the writer does not wake: an hour's interval), then one flush that
    builds and commits everything: wall and CPU µs per call for each part."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        ko.call("four-variable", KFRE, subject="patient-123")
    middle, cpu_middle = time.perf_counter(), time.process_time()
    ko.recorder.flush()  # type: ignore[union-attr]
    end, cpu_end = time.perf_counter(), time.process_time()
    per = 1e6 / calls
    return (middle - start) * per, (cpu_middle - cpu) * per, (end - middle) * per, (cpu_end - cpu_middle) * per


def library(calls: int, blocks: int) -> None:
    """Each configuration in ``blocks`` blocks of ``calls // blocks``, interleaved, so that a burst of
    load from other processes hits all of them alike; each figure is the best block's (the least
    disturbed), and the median block's is printed beside it."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = kgrid_py.load("kfre@1", shelf=SHELF)
        url = f"sqlite:///{Path(tmp) / 'capture.sqlite3'}"
        secret = os.urandom(32).hex().encode()
        captured = kgrid_py.load("kfre@1", shelf=SHELF, capture=url, site="bench", subject_secret=secret)
        paused = kgrid_py.load("kfre@1", shelf=SHELF)
        store = captured.recorder.store  # type: ignore[union-attr]
        paused.recorder = Capture(store, site="bench", keyer=keyer_for(secret), flush_interval_s=3600)
        _per_call_us(plain, 500, flush=False), _per_call_us(captured, 500, flush=True)  # warm up
        _paused_us(paused, 500)
        n = max(calls // blocks, 1)
        runs: dict[str, list[tuple[float, ...]]] = {"off": [], "queued": [], "amortised": [], "paused": []}
        for _ in range(blocks):
            runs["off"].append(_per_call_us(plain, n, flush=False))
            runs["queued"].append(_per_call_us(captured, n, flush=False))
            runs["amortised"].append(_per_call_us(captured, n, flush=True))
            runs["paused"].append(_paused_us(paused, n))

        def best(name: str, i: int) -> float:
            return min(r[i] for r in runs[name])

        def median(name: str, i: int) -> float:
            return statistics.median(r[i] for r in runs[name])

        paused.recorder.close()  # type: ignore[union-attr]
        stored = store.count_calls()
        captured.recorder.close()  # type: ignore[union-attr]
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        print(f"library ko.call, {blocks} interleaved blocks of {n} calls; best block (median block):")
        off, off_cpu = best("off", 0), best("off", 1)
        print(
            f"  without capture: {off:.1f} us wall ({median('off', 0):.1f}), "
            f"{off_cpu:.1f} us CPU ({median('off', 1):.1f})"
        )
        queued = best("queued", 0)
        print(f"  with capture, as the caller sees it: {queued:.1f} us (+{queued - off:.1f} us)")
        am, am_cpu = best("amortised", 0), best("amortised", 1)
        print(
            f"  with capture, amortised until committed: {am:.1f} us wall (+{am - off:.1f}; median block "
            f"+{median('amortised', 0) - median('off', 0):.1f}), {am_cpu:.1f} us CPU of all threads "
            f"(+{am_cpu - off_cpu:.1f}; median block +{median('amortised', 1) - median('off', 1):.1f})"
        )
        caller_cpu, writer_cpu = best("paused", 1), best("paused", 3)
        print(
            f"  writer paused: calling thread {caller_cpu:.1f} us CPU per call (+{caller_cpu - off_cpu:.1f}); "
            f"then the writer's build + commit {writer_cpu:.1f} us CPU per record ({best('paused', 2):.1f} wall)"
        )
        print(f"  stored: {stored} calls, {size / stored:.0f} bytes per call (SQLite file + WAL, indexes included)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(times.get(p, 0.0) for p in tree)


def _wrk(url: str, duration: int, lua: Path, connections: int = 32) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 latency (ms) from wrk --latency."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(lua), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(label: str) -> float:
        value, unit = re.search(label + r"\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return rps, percentile("50%"), percentile("99%")


def activator(duration: int) -> None:
    import json

    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        body = json.dumps(KFRE)
        lua.write_text(f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n")
        configs = [
            ("off", []),
            ("on, synchronous=normal (default)", ["--capture", f"sqlite:///{Path(tmp) / 'n.sqlite3'}"]),
            ("on, synchronous=full", ["--capture", f"sqlite:///{Path(tmp) / 'f.sqlite3'}?synchronous=full"]),
        ]
        results = {label: _serve_and_load(extra, duration, lua) for label, extra in configs}
        off = results["off"]
        print(
            f"activator KFRE, {duration} s each; capture off: "
            f"c=32 {off['c32'][0]:.0f} req/s p99 {off['c32'][2]:.1f} ms, "
            f"server CPU {off['cpu']:.0f} us/request; c=1 {off['c1'][0]:.0f} req/s, p50 {off['c1'][1]:.2f} ms, "
            f"p99 {off['c1'][2]:.2f} ms"
        )
        for label, got in results.items():
            if label == "off":
                continue
            print(
                f"  capture {label}: c=32 {got['c32'][0]:.0f} req/s ({got['c32'][0] / off['c32'][0]:.2f}x), "
                f"p99 {got['c32'][2]:.1f} ms ({got['c32'][2] - off['c32'][2]:+.1f}); server CPU {got['cpu']:.0f} "
                f"us/request ({got['cpu'] - off['cpu']:+.0f}); c=1 {got['c1'][0]:.0f} req/s, "
                f"p50 {got['c1'][1]:.2f} ms ({got['c1'][1] - off['c1'][1]:+.2f}), "
                f"p99 {got['c1'][2]:.2f} ms ({got['c1'][2] - off['c1'][2]:+.2f})"
            )


def _serve_and_load(extra: list[str], duration: int, lua: Path) -> dict[str, Any]:
    """wrk at c=32 (with the server's CPU µs per request) and at c=1, for one ``kgrid serve`` configuration."""
    port = _free_port()
    args = ["serve", str(SHELF), "--port", str(port), "--workers", "1"]
    args += ["--no-watch", "--no-access-log", "--no-verify-vectors", "--site", "bench", *extra]
    server = subprocess.Popen([ROOT / ".venv/bin/kgrid", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        cpu = _tree_cpu_s(server.pid)
        c32 = _wrk(url, duration, lua)
        cpu = _tree_cpu_s(server.pid) - cpu
        c1 = _wrk(url, duration, lua, connections=1)
        return {"c32": c32, "c1": c1, "cpu": cpu / (c32[0] * duration) * 1e6}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000, help="library calls per configuration")
    parser.add_argument("--blocks", type=int, default=20, help="interleaved blocks the calls are split into")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--no-activator", action="store_true")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load}, {os.cpu_count()} CPUs")
    library(args.calls, args.blocks)
    if not args.no_activator:
        activator(args.duration)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
