"""Helpers for the activator tests: shelves built from the demo KO, and a real server process.

``Server`` runs ``kgrid serve`` (the real entry point, uvicorn and all) on a free loopback port in
a subprocess, waits until ``/ready``, and stops it afterwards; tests talk to it over HTTP only.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from demo_ko import write_demo_ko

from kgrid_py.curation.build import seal

ADMIN_TOKEN = "test-admin-token"
GOOD = {"weight": 70, "height": 1.75, "sex": "female", "age": 40}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _edit_metadata(path: Path, **changes: object) -> Path:
    file = path / "metadata.json"
    raw = json.loads(file.read_text())
    raw.update(changes)
    file.write_text(json.dumps(raw, indent=2))
    seal(path)
    return path


def publish(template: Path, shelf: Path, version: str, status: str = "active", **changes: object) -> Path:
    """Copy the demo KO in as ``version`` (staged beside the shelf, then renamed: atomic)."""
    staging = shelf / f"_staging-{version}"
    shutil.copytree(template, staging)
    _edit_metadata(staging, **{"@id": f"demo-bmi/{version}", "dc:version": version, "status": status, **changes})
    target = shelf / "demo-bmi" / version
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, target)
    return target


def build_shelf(root: Path) -> tuple[Path, Path]:
    """A shelf with every case: active, deprecated, retired, draft, tampered, failing vectors, broken.

    Returns (shelf, template): the template is a sealed demo KO to publish further versions from.
    """
    template = write_demo_ko(root / "template")
    shelf = root / "shelf"
    shelf.mkdir()
    publish(template, shelf, "1.0.0")
    publish(template, shelf, "1.1.0")
    publish(template, shelf, "0.9.0", "deprecated")
    publish(template, shelf, "0.5.0", "retired", successor="demo-bmi@^1.0.0")
    publish(template, shelf, "1.2.0", "draft")
    tampered = publish(template, shelf, "1.3.0")
    with open(tampered / "model.onnx", "ab") as file:
        file.write(b"\0")
    failing = publish(template, shelf, "1.4.0")
    vectors = json.loads((failing / "tests.json").read_text())
    vectors["vectors"][0]["expected"]["bmi"] = 99.0
    (failing / "tests.json").write_text(json.dumps(vectors))
    seal(failing)
    broken = shelf / "broken-ko" / "1.0.0"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text("{not json")
    return shelf, template


def _limit_open_files(count: int) -> None:
    """In the server's process before it starts: a hard limit on open files, as a small host has."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


class Server:
    """``kgrid serve SHELF`` on a free port, as its own process."""

    def __init__(self, shelf: Path, *args: str, log: Path | None = None, max_open_files: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-c", "from kgrid_py.cli import main; main()", "serve", str(shelf)]
        command += ["--port", str(self.port), "--admin-token", ADMIN_TOKEN, *args]
        self._out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        limit = None if max_open_files is None else functools.partial(_limit_open_files, max_open_files)
        self.process = subprocess.Popen(command, stdout=self._out, stderr=subprocess.STDOUT, preexec_fn=limit)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.read_log()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s: {self.read_log()[-2000:]}")

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._out is not subprocess.DEVNULL:
            self._out.close()

    def __enter__(self) -> Server:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
