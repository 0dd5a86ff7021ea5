"""A shelf's own bookkeeping: the audit log, the publish lock and per-version records.

Everything lives under ``<shelf>/.kgrid/``, which shelves never scan (dot folders are skipped):
``audit.jsonl`` (one JSON object per line: when, who, action, ref, digest, outcome, reason),
``lock`` (serialises publications and status changes), ``staging/`` (unpacking in progress),
``pending/<id>@<version>.json`` (a publication between "all checks passed" and "recorded"),
``records/<id>/<version>.json`` (what was published) and ``lifecycle/<id>/<version>.json``
(deprecation and sunset dates). The log never holds a token: ``actor`` is a principal's name.

Crash safety: before a version's folder is renamed into view, its audit entry and signer record
are written durably to ``pending/``; after the rename they are moved to the log and ``records/``.
:func:`recover` replays what a killed process left there (a visible version gets its entry, an
invisible one an ``interrupted`` entry) and removes half-unpacked ``staging/`` folders. It runs
under the shelf lock before every publication and status change and when the activator starts
(and reloads), so a version is never served without its ``published`` entry for longer than a
crash. Opening a :class:`~kgrid_py.shelf.Shelf` only reads: a library reader never writes to a
shelf, which may well be read-only for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kgrid_py.shelf import STATE_DIR, lifecycle_record

__all__ = [
    "STATE_DIR",
    "append_audit",
    "audit_path",
    "complete_pending",
    "crash_point",
    "lifecycle_record",
    "read_audit",
    "recover",
    "shelf_lock",
    "state_dir",
    "utc_now",
    "write_json",
    "write_pending",
]

CRASH_ENV = "KGRID_TEST_CRASH_AT"
"""Test hook: the name of a publication stage at which the process SIGKILLs itself (see crash_point)."""

log = logging.getLogger("kgrid_py")


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


def read_audit(log: Path, *, strict: bool = True) -> list[dict[str, Any]]:
    """Every record of the log, oldest first; ``strict=False`` skips lines that do not parse."""
    if not log.exists():
        return []
    records = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if strict:
                raise
    return records


@contextlib.contextmanager
def shelf_lock(shelf: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock on the shelf (a no-op where ``fcntl`` is missing).

    Yields whether the lock is held: always True when ``blocking``; without blocking, False when
    another process (or another open of it in this one) holds it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    with (state_dir(shelf) / "lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically and durably: a temporary file in the same folder, fsync, ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temp.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def crash_point(stage: str) -> None:
    """Kill this process with SIGKILL at ``stage`` when ``$KGRID_TEST_CRASH_AT`` names it (tests only)."""
    if os.environ.get(CRASH_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


# -- the publication journal ----------------------------------------------------------------------


def _pending_dir(shelf: Path) -> Path:
    return Path(shelf) / STATE_DIR / "pending"


def write_pending(
    shelf: Path, ko_id: str, version: str, digest: str, record: dict[str, Any], audit: dict[str, Any], log: Path
) -> Path:
    """Durably note a publication about to become visible: its signer record and audit entry."""
    intent = {
        "ko_id": ko_id,
        "version": version,
        "digest": digest,
        "record": record,
        "audit": {**audit, "journal": os.urandom(8).hex()},
        "log": str(log),
    }
    path = _pending_dir(shelf) / f"{ko_id}@{version}.json"
    write_json(path, intent)
    return path


def complete_pending(shelf: Path, pending: Path, *, recovered: bool = False) -> dict[str, Any]:
    """Move a pending publication's record to ``records/`` and its entry to the log; drop the note.

    Safe to repeat after a crash at any point: the entry carries a journal id and is appended once.
    """
    intent = json.loads(pending.read_text(encoding="utf-8"))
    ko_id, version = intent["ko_id"], intent["version"]
    write_json(state_dir(shelf) / "records" / ko_id / f"{version}.json", intent["record"])
    crash_point("recorded")
    log_file = Path(intent["log"])
    entry = dict(intent["audit"])
    if recovered:
        entry["recovered"] = True
    if not (recovered and _journal_logged(log_file, entry["journal"])):
        append_audit(log_file, **entry)
    crash_point("audited")
    pending.unlink()
    fsync_dir(pending.parent)
    return entry


def _journal_logged(log_file: Path, journal: str) -> bool:
    try:
        return any(record.get("journal") == journal for record in read_audit(log_file, strict=False))
    except (OSError, ValueError):
        return False


def recover(shelf: Path, *, locked: bool = False) -> int:
    """Replay interrupted publications and remove leftover staging folders; how many were replayed.

    ``locked``: the caller holds the shelf lock. Otherwise the lock is tried without waiting, and
    when another process holds it nothing is done (that process recovers before it publishes).
    """
    shelf = Path(shelf)
    if not locked:
        if not _has_leftovers(shelf):
            return 0
        with shelf_lock(shelf, blocking=False) as held:
            return _recover(shelf) if held else 0
    return _recover(shelf)


def _has_leftovers(shelf: Path) -> bool:
    for folder in (_pending_dir(shelf), Path(shelf) / STATE_DIR / "staging"):
        try:
            if any(folder.iterdir()):
                return True
        except OSError:
            continue
    return False


def _recover(shelf: Path) -> int:
    from kgrid_py.digest import folder_identity  # digest is a leaf; imported here to keep audit light

    staging = Path(shelf) / STATE_DIR / "staging"
    if staging.is_dir():
        for leftover in staging.iterdir():  # under the lock nobody is unpacking: all of it is debris
            shutil.rmtree(leftover, ignore_errors=True)
    replayed = 0
    pending_dir = _pending_dir(shelf)
    if not pending_dir.is_dir():
        return 0
    for pending in sorted(pending_dir.glob("*.json")):
        try:
            intent = json.loads(pending.read_text(encoding="utf-8"))
            target = Path(shelf) / intent["ko_id"] / intent["version"]
            visible = (target / "metadata.json").is_file() and folder_identity(target) == intent["digest"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable publication journal entry: %s", pending, exc)
            continue
        if visible:
            complete_pending(shelf, pending, recovered=True)
            log.warning("%s@%s: completed an interrupted publication", intent["ko_id"], intent["version"])
        else:
            entry = {k: v for k, v in intent["audit"].items() if k in ("actor", "action", "ref", "digest")}
            append_audit(
                Path(intent["log"]),
                **entry,
                outcome="interrupted",
                reason="the publishing process stopped before the version became visible; publish it again",
            )
            pending.unlink()
        replayed += 1
    fsync_dir(pending_dir)
    return replayed
