"""kgrid-py against its peers, side by side, on the same KFRE 4-variable call (issue 17).

    bash ../shared/peers/setup_venvs.sh            # once: peer virtualenvs under /tmp, and wrk
    .venv/bin/python benchmarks/peers.py           # prints the Markdown table; --json FILE keeps the figures

Each server runs alone, one worker, in its own virtualenv (kgrid-py and the bare echo from this
project's ``.venv``; kgrid-sdk, MLServer, KServe and MLflow from ``--peers-venv-*``), started on a
free loopback port and stopped (its whole process group) before the next starts. For each: one
call with curl's equivalent (the answer's status and head are printed, so a wrong answer is
seen), a 2 s warm-up, then wrk for ``--duration`` s at concurrency 1 and 32 (one wrk thread).
The OIP peers run the KO's own ONNX graph. The peer apps and wrk scripts are ``--peers``
(``../shared/peers``).

The "limit" row is the best a KO call can do on this HTTP stack: one echo plus one raw ONNX
Runtime run, 1 / (1 / echo req/s + ORT seconds per call), both measured in this run (ORT: the
median of 5 x 2,000 single-row ``InferenceSession.run`` calls, one thread, as the library's).
Each kgrid-py row is also given as a share of that limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONNX = ROOT / "knowledge_objects" / "kfre" / "1.0.0" / "four_variable.onnx"
START_TIMEOUT_S = 90


@dataclass(frozen=True)
class Run:
    """One wrk measurement."""

    rps: float
    p50_ms: float
    non2xx: int


@dataclass
class Row:
    server: str
    http: int
    answer: str
    c1: Run | None = None
    c32: Run | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lua_body(lua: Path) -> bytes:
    match = re.search(r"^wrk\.body\s*=\s*'(.*)'$", lua.read_text(), re.M)
    if match is None:
        raise SystemExit(f"{lua}: no wrk.body line")
    return match.group(1).encode()


def call_once(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(200).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(200).decode(errors="replace")


def wait_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # it answers (a 404 or 405 from a server without that page)
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT_S} s")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, lua: Path, connections: int, seconds: float) -> Run:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(lua), url]
    text = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", text).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()  # type: ignore[union-attr]
    non2xx = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s*(\d+)", text))
    return Run(rps, float(value) * _UNITS[unit], non2xx)


@contextlib.contextmanager
def serving(args: list[str], ready: str, cwd: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """Start a server in its own process group; stop that group (and only it) on leaving."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        wait_up(ready, process)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        time.sleep(1)


def measure(name: str, url: str, lua: Path, seconds: float) -> Row:
    status, answer = call_once(url, lua_body(lua))
    row = Row(name, status, " ".join(answer.split())[:100])
    wrk(url, lua, 4, 2)  # warm-up
    row.c1 = wrk(url, lua, 1, seconds)
    row.c32 = wrk(url, lua, 32, seconds)
    print(f"{name}: {row}", file=sys.stderr, flush=True)
    return row


def raw_ort_seconds() -> float:
    """Seconds for one single-row ``InferenceSession.run`` of the KFRE graph (median of 5 x 2,000)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(ONNX), options, providers=["CPUExecutionProvider"])
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


def run_all(peers: Path, venvs: dict[str, Path], seconds: float, only: set[str] | None) -> list[Row]:
    kg = ROOT / ".venv" / "bin"
    work = Path(tempfile.mkdtemp(prefix="kgrid-peers-"))
    kfre, oip, mlf = peers / "post_kfre.lua", peers / "post_oip.lua", peers / "post_mlflow.lua"
    rows: list[Row] = []

    def wanted(name: str) -> bool:
        return only is None or name in only

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if wanted("bare-echo"):
        uvicorn = [str(kg / "python"), "-m", "uvicorn", "bare_echo:app", "--host", "127.0.0.1", "--port", str(port)]
        with serving([*uvicorn, "--log-level", "warning", "--no-access-log"], f"{base}/docs", peers, work / "echo.log"):
            rows.append(measure("bare-echo", f"{base}/risk", kfre, seconds))
    if wanted("kgrid-py"):
        serve = [str(kg / "kgrid"), "serve", "knowledge_objects", "--host", "127.0.0.1", "--port", str(port)]
        with serving([*serve, "--no-access-log", "--no-watch"], f"{base}/ready", ROOT, work / "kgrid.log"):
            rows.append(measure("kgrid-py-1x", f"{base}/kfre/1.0.0/four-variable", kfre, seconds))
            rows.append(measure("kgrid-py-2.0", f"{base}/endpoints/kfre/four-variable", kfre, seconds))
            url = f"{base}/v2/models/kfre.four-variable/versions/1.0.0/infer"
            rows.append(measure("kgrid-py-oip", url, oip, seconds))
    if wanted("kgrid-sdk"):
        python = str(venvs["sdk"] / "bin" / "python")
        args = [python, "-m", "uvicorn", "kfre_kgrid_sdk.app:app", "--host", "127.0.0.1", "--port", str(port)]
        with serving(
            [*args, "--log-level", "warning", "--no-access-log"], f"{base}/openapi.json", peers, work / "sdk.log"
        ):
            rows.append(measure("kgrid-sdk", f"{base}/risk", kfre, seconds))
    if wanted("mlserver"):
        folder = work / "mls"
        shutil.copytree(peers / "mlserver_kfre", folder)
        settings = json.loads((folder / "model-settings.json").read_text())
        settings["parameters"]["uri"] = str(ONNX)
        (folder / "model-settings.json").write_text(json.dumps(settings))
        env = {"MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": str(free_port()), "MLSERVER_HOST": "127.0.0.1"}
        args = [str(venvs["mlserver"] / "bin" / "mlserver"), "start", "."]
        with serving(args, f"{base}/v2/health/ready", folder, work / "mlserver.log", env):
            time.sleep(2)
            rows.append(measure("mlserver-oip", f"{base}/v2/models/kfre.four-variable/infer", oip, seconds))
    if wanted("kserve"):
        args = [str(venvs["kserve"] / "bin" / "python"), str(peers / "kserve_kfre.py"), str(ONNX), str(port)]
        with serving(args, f"{base}/v2/health/ready", work, work / "kserve.log"):
            time.sleep(1)
            rows.append(measure("kserve-oip", f"{base}/v2/models/kfre.four-variable/infer", oip, seconds))
    if wanted("mlflow"):
        bin_dir = venvs["mlflow"] / "bin"
        subprocess.run([str(bin_dir / "python"), str(peers / "mlflow_kfre.py"), str(work / "mlf")], check=True)
        args = [str(bin_dir / "mlflow"), "models", "serve", "-m", str(work / "mlf"), "--env-manager", "local"]
        env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
        with serving([*args, "-h", "127.0.0.1", "-p", str(port)], f"{base}/ping", work, work / "mlflow.log", env):
            rows.append(measure("mlflow", f"{base}/invocations", mlf, seconds))
    print(f"server logs in {work}", file=sys.stderr)
    return rows


LABELS = {
    "bare-echo": "bare Starlette JSON echo (the stack's ceiling)",
    "kgrid-py-1x": "kgrid-py, KGrid 1.x route `/kfre/1.0.0/four-variable`",
    "kgrid-py-2.0": "kgrid-py, KGrid 2.0 route `/endpoints/kfre/four-variable`",
    "kgrid-py-oip": "kgrid-py, OIP `/v2/models/kfre.four-variable/versions/1.0.0/infer`",
    "kgrid-sdk": "kgrid-sdk 2.0.2 (KGrid 2.0's Python activator, hand-written function)",
    "mlserver-oip": "MLServer 1.7.1 (OIP, custom runtime on the same ONNX graph)",
    "kserve-oip": "KServe 0.21 Python model server (OIP, same graph)",
    "mlflow": "MLflow 3.17 `models serve` (pyfunc)",
}


def table(rows: list[Row], ort_s: float) -> str:
    by = {r.server: r for r in rows}
    lines = [
        "| server | http | c=1 req/s | c=1 p50 | c=32 req/s | c=32 p50 | non-2xx | share of limit c=1 / c=32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    echo = by.get("bare-echo")
    limit = None
    if echo and echo.c1 and echo.c32:
        limit = (1 / (1 / echo.c1.rps + ort_s), 1 / (1 / echo.c32.rps + ort_s))
    for r in rows:
        assert r.c1 and r.c32
        share = f"{r.c1.rps / limit[0]:.2f}x / {r.c32.rps / limit[1]:.2f}x" if limit and r.server != "bare-echo" else ""
        lines.append(
            f"| {LABELS.get(r.server, r.server)} | {r.http} | {r.c1.rps:,.0f} | {r.c1.p50_ms:.2f} ms "
            f"| {r.c32.rps:,.0f} | {r.c32.p50_ms:.2f} ms | {r.c1.non2xx + r.c32.non2xx} | {share} |"
        )
    if limit:
        lines.append(
            f"| limit: 1 / (echo time + raw ORT {ort_s * 1e6:.1f} µs) | | {limit[0]:,.0f} | | {limit[1]:,.0f} | | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=Path, default=ROOT.parent / "shared" / "peers")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per concurrency")
    parser.add_argument("--peers-venv-sdk", type=Path, default=Path("/tmp/peers"))
    parser.add_argument("--peers-venv-mlserver", type=Path, default=Path("/tmp/peers-mlserver"))
    parser.add_argument("--peers-venv-kserve", type=Path, default=Path("/tmp/peers-kserve"))
    parser.add_argument("--peers-venv-mlflow", type=Path, default=Path("/tmp/peers-mlflow"))
    parser.add_argument(
        "--only", nargs="*", choices=["bare-echo", "kgrid-py", "kgrid-sdk", "mlserver", "kserve", "mlflow"]
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed; run ../shared/peers/setup_venvs.sh")
    venvs = {
        "sdk": args.peers_venv_sdk,
        "mlserver": args.peers_venv_mlserver,
        "kserve": args.peers_venv_kserve,
        "mlflow": args.peers_venv_mlflow,
    }
    load = os.getloadavg()[0]
    ort_s = raw_ort_seconds()
    rows = run_all(args.peers, venvs, args.duration, set(args.only) if args.only else None)
    end = os.getloadavg()[0]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average at the start: {load:.2f}, at the end: {end:.2f}")
    print(table(rows, ort_s))
    if args.json:
        figures = {
            "raw_ort_s": ort_s,
            "rows": [r.__dict__ | {"c1": r.c1.__dict__, "c32": r.c32.__dict__} for r in rows],
        }  # type: ignore[union-attr]
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
