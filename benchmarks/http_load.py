"""HTTP load benchmark: a KO call against a bare JSON echo on the same activator stack.

Closed loop over loopback: C connections each send a request, wait for the answer, send the next.
Reports requests/s and p50/p99 latency at concurrency 1 and 32 (the median of ``--rounds``
rounds, which alternate between the endpoints) for a KFRE call (the demo BMI KO when
knowledge_objects/kfre is absent) and for ``/_bench/echo``, which only parses and returns JSON.
The client is a minimal raw HTTP/1.1 keep-alive client, so that on a small machine the numbers
measure the server rather than a client library.

    .venv/bin/python benchmarks/http_load.py [--requests 5000] [--rounds 3] [--shelf knowledge_objects]

The activator tests reuse :func:`closed_loop` for their load test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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


def _wait_ready(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
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


def _demo_shelf() -> Path:
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    from demo_ko import write_demo_ko

    root = Path(tempfile.mkdtemp(prefix="kgrid-bench-"))
    write_demo_ko(root)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests per measurement (default 5000)")
    parser.add_argument("--shelf", type=Path, default=REPO / "knowledge_objects")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--inference-threads", type=int, default=4, help="passed to kgrid serve")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round is reported")
    args = parser.parse_args()

    if (args.shelf / "kfre" / "1.0.0" / "metadata.json").exists():
        shelf, path, inputs, label = args.shelf, "/kfre/1.0.0/four-variable", KFRE_INPUT, "KFRE four-variable"
    else:
        shelf, path, inputs, label = _demo_shelf(), "/demo-bmi/1.0.0/bmi", DEMO_INPUT, "demo BMI (no kfre on shelf)"
    command = [sys.executable, "-c", "from kgrid_py.cli import main; main()", "serve", str(shelf)]
    command += ["--port", str(args.port), "--bench-echo", "--no-access-log", "--no-watch"]
    command += ["--inference-threads", str(args.inference_threads)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(args.port, server)
        body = json.dumps(inputs).encode()

        async def measure() -> list[tuple[str, int, Outcome]]:
            rows = []
            for target in (path, "/_bench/echo"):  # warm up both
                await closed_loop("127.0.0.1", args.port, target, body, total=500, concurrency=4)
            for concurrency in args.concurrency:
                # Rounds alternate between the two endpoints, so a noisy neighbour hits both alike.
                rounds: dict[str, list[Outcome]] = {label: [], "bare JSON echo": []}
                for _ in range(args.rounds):
                    for name, target in ((label, path), ("bare JSON echo", "/_bench/echo")):
                        rounds[name].append(
                            await closed_loop(
                                "127.0.0.1", args.port, target, body, total=args.requests, concurrency=concurrency
                            )
                        )
                for name, outcomes in rounds.items():
                    outcomes.sort(key=lambda o: o.rate)
                    rows.append((name, concurrency, outcomes[len(outcomes) // 2]))
            return rows

        rows = asyncio.run(measure())
    finally:
        server.terminate()
        server.wait(timeout=10)

    print(
        f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, {path}, "
        f"{args.inference_threads} inference thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    print("| endpoint | concurrency | requests | failed | req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, concurrency, o in rows:
        print(
            f"| {name} | {concurrency} | {len(o.latencies)} | {o.failures} | {o.rate:,.0f} | "
            f"{o.percentile(0.5) * 1000:.2f} | {o.percentile(0.99) * 1000:.2f} |"
        )
    by = {(n == label, c): o for n, c, o in rows}
    for concurrency in args.concurrency:
        ratio = by[(True, concurrency)].rate / by[(False, concurrency)].rate
        print(f"KO/echo throughput at concurrency {concurrency}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
