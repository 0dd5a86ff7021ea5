"""The CDS Hooks state that must outlive a request and be shared by every worker: seen ``jti``s, feedback.

One SQLite file (stdlib ``sqlite3``, WAL), by default ``<shelf>/.kgrid/cds.sqlite3``, so that
``kgrid serve --workers N`` refuses a replayed token in every worker, not once per worker, and
feedback survives a restart. Each check is one indexed statement (O(1) in the number of tokens
seen); expired ``jti``s are deleted in bounded batches as calls come in, never in one long pass.
Without a path the store is in memory (one process: the library and tests).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

__all__ = ["CdsStore"]

PURGE_EVERY = 64  # claims between purges
PURGE_BATCH = 256  # expired rows deleted per purge

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cds_jti (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS cds_jti_once ON cds_jti (iss, jti);
CREATE INDEX IF NOT EXISTS cds_jti_expires ON cds_jti (expires);
CREATE TABLE IF NOT EXISTS cds_feedback (
    id INTEGER PRIMARY KEY,
    received TEXT NOT NULL,
    service TEXT NOT NULL,
    ko TEXT NOT NULL,
    version TEXT NOT NULL,
    card TEXT NOT NULL,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL
);
"""


class CdsStore:
    """Replay cache and feedback log in one SQLite file (or in memory when ``path`` is None)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._claims = 0

    def _open(self) -> sqlite3.Connection:
        """The connection, opened on first use (so a server that never sees a CDS call writes nothing).

        One connection, used under the lock from worker threads; autocommit, so each statement is its
        own transaction and other processes see it at once; a busy timeout, as workers share the file.
        """
        if self._db is None:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                str(self.path) if self.path is not None else ":memory:",
                timeout=5.0,
                isolation_level=None,
                check_same_thread=False,
            )
            if self.path is not None:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def claim(self, iss: str, jti: str, expires: float, now: float) -> bool:
        """Record ``jti`` as used until ``expires``; False when it is already used and not yet expired."""
        with self._lock:
            # One statement: insert, or take over an expired row; a live row is left alone (rowcount 0).
            cursor = self._open().execute(
                "INSERT INTO cds_jti (iss, jti, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (iss, jti) DO UPDATE SET expires = excluded.expires WHERE cds_jti.expires <= ?",
                (iss, jti, expires, now),
            )
            fresh = cursor.rowcount == 1
            self._claims += 1
            if self._claims % PURGE_EVERY == 0:
                self._purge(now)
            return fresh

    def _purge(self, now: float) -> int:
        cursor = self._open().execute(
            "DELETE FROM cds_jti WHERE rowid IN (SELECT rowid FROM cds_jti WHERE expires <= ? LIMIT ?)",
            (now, PURGE_BATCH),
        )
        return cursor.rowcount

    def purge(self, now: float) -> int:
        """Delete at most one batch of expired ``jti``s; how many went."""
        with self._lock:
            return self._purge(now)

    def jti_count(self) -> int:
        with self._lock:
            return int(self._open().execute("SELECT count(*) FROM cds_jti").fetchone()[0])

    def add_feedback(self, records: list[dict[str, Any]]) -> None:
        """Append feedback records (each with service, ko, version, card, outcome, received) atomically."""
        rows = [
            (
                r["received"],
                r["service"],
                r["ko"],
                r["version"],
                r["card"],
                r["outcome"],
                json.dumps(r, sort_keys=True, ensure_ascii=False),
            )
            for r in records
        ]
        with self._lock:
            self._open().execute("BEGIN IMMEDIATE")
            try:
                self._open().executemany(
                    "INSERT INTO cds_feedback (received, service, ko, version, card, outcome, record) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._open().execute("ROLLBACK")
                raise
            self._open().execute("COMMIT")

    def feedback(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The most recent feedback records, oldest first (at most ``limit``)."""
        with self._lock:
            rows = self._open().execute("SELECT record FROM cds_feedback ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
