"""One shelf generation for every worker of a server (``kgrid serve --workers N``).

uvicorn's workers are separate processes, each with its own registry. A publication, a status
change or ``/admin/reload`` in one worker bumps a counter in ``<shelf>/.kgrid/generation`` (written
whole and renamed into place, so every bump is a new inode); every worker compares that file's
``stat`` with the one it last caught up with before each request, and reloads first when it
changed, so no request is answered from a generation older than the newest one published. Each
worker also records the generation it serves in ``<run dir>/<pid>``; the worker that bumped waits
(bounded) for every live worker to record the new one, so that, normally, none of them pays for
the reload on a request's time.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

__all__ = ["Generations"]

Stamp = tuple[int, int, int]


class Generations:
    """The shared generation counter and the workers' acknowledgements of it."""

    def __init__(self, counter: Path, acks: Path) -> None:
        self.counter = counter
        self.acks = acks
        self.seen: Stamp | None = None  # the counter's stat when this worker last caught up

    def stamp(self) -> Stamp | None:
        try:
            stat = os.stat(self.counter)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def changed(self) -> bool:
        """Whether the counter changed since this worker last caught up: one ``stat``, no read."""
        return self.stamp() != self.seen

    def read(self) -> tuple[int, Stamp | None]:
        """The generation now, and the stat it was read under (read the stat first: never miss a bump)."""
        stamp = self.stamp()
        try:
            text = self.counter.read_text(encoding="ascii").strip()
            return (int(text) if text.isdigit() else 0), stamp
        except FileNotFoundError:
            return 0, stamp

    def bump(self) -> int:
        """Advance the generation by one (under a lock: workers publishing at once each get their own)."""
        import fcntl

        self.counter.parent.mkdir(parents=True, exist_ok=True)
        with open(self.counter.with_name(self.counter.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current, _ = self.read()
            temp = self.counter.with_name(f".{self.counter.name}.{os.getpid()}.tmp")
            temp.write_text(str(current + 1), encoding="ascii")
            os.replace(temp, self.counter)
            return current + 1

    def acknowledge(self, generation: int, stamp: Stamp | None) -> None:
        """Record that this worker serves ``generation`` (read under ``stamp``)."""
        self.seen = stamp
        self.acks.mkdir(parents=True, exist_ok=True)
        temp = self.acks / f".{os.getpid()}.tmp"
        temp.write_text(str(generation), encoding="ascii")
        os.replace(temp, self.acks / str(os.getpid()))

    def pending(self, generation: int) -> list[int]:
        """Live workers that have not yet recorded ``generation``; a dead worker's record is removed."""
        waiting = []
        for path in self.acks.iterdir() if self.acks.is_dir() else []:
            if not path.name.isdigit():
                continue
            pid = int(path.name)
            if not _alive(pid):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            try:
                text = path.read_text(encoding="ascii").strip()
            except OSError:
                continue
            if not text.isdigit() or int(text) < generation:
                waiting.append(pid)
        return waiting

    def wait_for_all(self, generation: int, timeout: float) -> list[int]:
        """Block until every live worker serves ``generation`` or ``timeout`` passes; who still lags."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = self.pending(generation)
            if not waiting or time.monotonic() >= deadline:
                return waiting
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
