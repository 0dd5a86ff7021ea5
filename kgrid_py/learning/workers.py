"""Run a ``python -m`` worker of this package in a child process: one JSON request in, bytes out.

A child process, not multiprocessing: spawning would re-run the caller's ``__main__``, and forking
a process with Arrow's and SQLite's threads can deadlock. Workers write one line on stderr and
exit with status 1 on failure; that line becomes the error here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

WORKER_TIMEOUT_S = 3600.0


class WorkerFailed(RuntimeError):
    """A worker could not be started, ran past its time, or reported a failure (its line is the message)."""


def serve(handle: Callable[[dict[str, Any]], bytes]) -> int:
    """A worker's ``main``: ``handle`` the JSON request on stdin, its bytes to stdout; exit status.

    On any failure, one line (``Type: message``) on stderr and status 1, which :func:`run_worker`
    turns into :class:`WorkerFailed`.
    """
    try:
        sys.stdout.buffer.write(handle(json.loads(sys.stdin.buffer.read())))
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


def run_worker(module: str, request: dict[str, Any], timeout_s: float = WORKER_TIMEOUT_S) -> bytes:
    """What ``python -m module`` writes on stdout for ``request`` (JSON on its stdin)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", module],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WorkerFailed(str(exc)) from exc
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        raise WorkerFailed(lines[-1])
    return done.stdout
