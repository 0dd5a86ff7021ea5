"""HTTP load benchmark: every call route style against a bare JSON echo on the same activator stack.

One ``kgrid serve --bench-echo`` (``--workers N``) on loopback, driven by wrk (one thread, closed
loop: C keep-alive connections each send a request, wait for the answer, send the next) at
concurrency 1 and 32, for the same KFRE 4-variable call over the KGrid 1.x route, the KGrid 2.0
route and the Open Inference Protocol, and for ``/_bench/echo``, which goes through the same
middleware and strict JSON parsing and returns the parsed body. Rounds alternate between the
targets (a noisy neighbour hits them alike) and the median round of each is reported. Raw ONNX
Runtime time for one single-row call of the same graph is measured in the same run, so the
"limit" (1 / (echo time + raw ORT time)) and each route's share of it come from one run.

    .venv/bin/python benchmarks/http_load.py [--duration 5] [--rounds 3] [--workers 1]

The activator tests reuse :func:`closed_loop` (a minimal raw HTTP/1.1 keep-alive client) for their
load test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KFRE_INPUT = {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}
DEMO_INPUT = {"weight": 70, "height": 1.75, "sex": "female", "age": 40}


class Connection:
    """One keep-alive HTTP/1.1 connection; enough of the protocol for our server's answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = None
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is None:
            raise RuntimeError("response without Content-Length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


@dataclass
class Outcome:
    latencies: list[float]
    seconds: float
    failures: int

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    total: int,
    concurrency: int,
    check: Callable[[int, bytes, float, float], Awaitable[None] | None] | None = None,
) -> Outcome:
    """``total`` requests over ``concurrency`` connections; ``check(status, body, start, end)`` sees each."""
    connections = [await Connection.open(host, port) for _ in range(concurrency)]
    latencies: list[float] = []
    failures = 0
    remaining = total

    async def run(connection: Connection) -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            status, answer = await connection.post(path, body)
            ended = time.perf_counter()
            latencies.append(ended - started)
            if status != 200:
                failures += 1
            if check is not None:
                result = check(status, answer, started, ended)
                if result is not None:
                    await result

    began = time.perf_counter()
    try:
        await asyncio.gather(*(run(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    return Outcome(latencies, time.perf_counter() - began, failures)


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("server not ready")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


OIP_INPUT = {
    "inputs": [
        {"name": "age", "shape": [1], "datatype": "FP64", "data": [63]},
        {"name": "sex", "shape": [1], "datatype": "BYTES", "data": ["female"]},
        {"name": "egfr", "shape": [1], "datatype": "FP64", "data": [45]},
        {"name": "uacr", "shape": [1], "datatype": "FP64", "data": [30]},
    ]
}
# (label, path, body): every target answers 200 with the same call's result (echo: the body).
TARGETS = [
    ("bare JSON echo (same stack)", "/_bench/echo", KFRE_INPUT),
    ("KGrid 1.x `/kfre/1.0.0/four-variable`", "/kfre/1.0.0/four-variable", KFRE_INPUT),
    ("KGrid 2.0 `/endpoints/kfre/four-variable`", "/endpoints/kfre/four-variable", KFRE_INPUT),
    (
        "OIP `/v2/models/kfre.four-variable/versions/1.0.0/infer`",
        "/v2/models/kfre.four-variable/versions/1.0.0/infer",
        OIP_INPUT,
    ),
]


@dataclass(frozen=True)
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, body: bytes, connections: int, seconds: float, script_dir: Path) -> WrkRun:
    """One wrk run (one thread) POSTing ``body`` as JSON; non-2xx answers and socket errors counted."""
    lua = script_dir / f"post_{abs(hash(body))}.lua"
    text = body.decode().replace("\\", "\\\\").replace("'", "\\'")
    lua.write_text(f"wrk.method = 'POST'\nwrk.body = '{text}'\nwrk.headers['Content-Type'] = 'application/json'\n")
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(lua), url]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(q: str) -> float:
        value, unit = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * _UNITS[unit]

    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s*(\d+)", out))
    errors += sum(int(n) for n in re.findall(r"Socket errors:.*?(\d+)", out))
    return WrkRun(rps, pct("50"), pct("99"), errors)


def raw_ort_seconds(onnx: Path) -> float:
    """Seconds for one single-row ``InferenceSession.run`` of the graph (median of 5 x 2,000; one thread)."""
    import statistics

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.array([1.0]) for i in session.get_inputs()}
    feeds.update(age=np.array([63.0]), egfr=np.array([45.0]), uacr=np.array([30.0]), sex=np.array([0.0]))
    for _ in range(500):
        session.run(None, feeds)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(2_000):
            session.run(None, feeds)
        times.append((time.perf_counter() - started) / 2_000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per target and concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round is reported")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--workers", type=int, default=1, help="passed to kgrid serve")
    parser.add_argument("--inference-threads", type=int, default=4, help="passed to kgrid serve")
    parser.add_argument("--only", nargs="*", help="labels' first words to keep (echo is always measured)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk, or ../shared/peers/setup_venvs.sh)")
    shelf = REPO / "knowledge_objects"
    port = _free_port()
    targets = [t for t in TARGETS if t[1] == "/_bench/echo" or not args.only or t[0].split()[0] in args.only]
    command = [sys.executable, "-c", "from kgrid_py.cli import main; main()", "serve", str(shelf)]
    command += ["--port", str(port), "--bench-echo", "--no-access-log", "--no-watch"]
    command += ["--inference-threads", str(args.inference_threads), "--workers", str(args.workers)]
    ort_s = raw_ort_seconds(shelf / "kfre" / "1.0.0" / "four_variable.onnx")
    load_start = os.getloadavg()
    scripts = Path(tempfile.mkdtemp(prefix="kgrid-http-load-"))
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs: dict[tuple[str, int], list[WrkRun]] = {}
    try:
        _wait_ready(port, server)
        base = f"http://127.0.0.1:{port}"
        for _, path, body in targets:  # warm up every target (and, with workers, every worker)
            wrk(base + path, json.dumps(body).encode(), 4, 1.0, scripts)
        for _ in range(args.rounds):
            for concurrency in args.concurrency:
                for label, path, body in targets:
                    run = wrk(base + path, json.dumps(body).encode(), concurrency, args.duration, scripts)
                    runs.setdefault((label, concurrency), []).append(run)
    finally:
        server.terminate()
        server.wait(timeout=15)
    load_end = os.getloadavg()
    median = {key: sorted(found, key=lambda r: r.rps)[len(found) // 2] for key, found in runs.items()}
    echo = targets[0][0]
    limit = {c: 1 / (1 / median[(echo, c)].rps + ort_s) for c in args.concurrency}
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {args.workers} worker(s), {args.inference_threads} inference thread(s); "
        f"load average (1/5/15 min) at the start {'/'.join(f'{x:.1f}' for x in load_start)}, "
        f"at the end {'/'.join(f'{x:.1f}' for x in load_end)}; raw ORT {ort_s * 1e6:.1f} µs a call; "
        f"median of {args.rounds} rounds of {args.duration:g} s"
    )
    print("| endpoint | conc. | req/s | p50 ms | p99 ms | errors | share of limit |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for concurrency in args.concurrency:
        for label, _, _ in targets:
            r = median[(label, concurrency)]
            share = "" if label == echo else f"{r.rps / limit[concurrency]:.2f}x"
            print(
                f"| {label} | {concurrency} | {r.rps:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.2f} | {r.errors} | {share} |"
            )
        print(f"| limit: 1 / (echo + raw ORT) | {concurrency} | {limit[concurrency]:,.0f} | | | | |")
    if args.json:
        figures = {
            "raw_ort_s": ort_s,
            "workers": args.workers,
            "load_start": load_start,
            "load_end": load_end,
            "runs": [
                {
                    "target": label,
                    "concurrency": c,
                    "median": median[(label, c)].__dict__,
                    "all": [r.__dict__ for r in rs],
                }
                for (label, c), rs in runs.items()
            ],
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
