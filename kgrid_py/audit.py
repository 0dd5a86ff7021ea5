"""A shelf's own bookkeeping: the audit log, the publish lock and per-version records.

Everything lives under ``<shelf>/.kgrid/``, which shelves never scan (dot folders are skipped):
``audit.jsonl`` (one JSON object per line: when, who, action, ref, digest, outcome, reason),
``lock`` (serialises publications and status changes), ``staging/`` (unpacking in progress),
``records/<id>/<version>.json`` (what was published) and ``lifecycle/<id>/<version>.json``
(deprecation and sunset dates). The log never holds a token: ``actor`` is a principal's name.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["STATE_DIR", "append_audit", "audit_path", "read_audit", "shelf_lock", "state_dir", "utc_now", "write_json"]

STATE_DIR = ".kgrid"


def state_dir(shelf: Path) -> Path:
    path = Path(shelf) / STATE_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def audit_path(shelf: Path) -> Path:
    return state_dir(shelf) / "audit.jsonl"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def append_audit(log: Path, **record: Any) -> dict[str, Any]:
    """Append one record (with ``time``) as a single ``write`` to an append-only file, then fsync."""
    entry = {"time": utc_now(), **record}
    line = (json.dumps(entry, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def read_audit(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


@contextlib.contextmanager
def shelf_lock(shelf: Path) -> Iterator[None]:
    """An exclusive advisory lock on the shelf (a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with (state_dir(shelf) / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temp, path)
