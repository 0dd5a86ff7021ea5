"""Refused credentials go to the shelf's audit log, rate-limited.

Every 401/403 (publishing tokens, the admin reload, CDS Hooks JWTs) is a security event a
governance committee wants on record. An unauthenticated flood must not become a flood of fsyncs,
so at most ``per_second`` records are written a second per worker and the rest are counted into
the next record's ``suppressed_before``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request

from kgrid_py.curation.audit import append_audit, audit_path

__all__ = ["RefusalAudit"]

log = logging.getLogger("activator")


class RefusalAudit:
    """Appends one ``authorize``/``refused`` record per refusal to ``<shelf>/.kgrid/audit.jsonl``."""

    def __init__(self, shelf: Path, *, per_second: int = 20) -> None:
        self.log_file = audit_path(shelf)
        self.per_second = per_second
        self._window = 0.0
        self._in_window = 0
        self._suppressed = 0

    def record(self, request: Request, status: int, reason: str, **extra: Any) -> None:
        """Record a refusal of ``request`` (never its credentials: only the reason and where it came from)."""
        now = time.monotonic()
        if now - self._window > 1.0:
            self._window, self._in_window = now, 0
        self._in_window += 1
        if self._in_window > self.per_second:
            self._suppressed += 1
            return
        entry: dict[str, Any] = {
            "actor": None,
            "action": "authorize",
            "outcome": "refused",
            "http_status": status,
            **extra,
            "route": f"{request.method} {request.url.path}"[:300],
            "client": request.client.host if request.client else None,
            "request_id": request.scope.get("request_id"),
            "reason": reason[:500],
        }
        if self._suppressed:
            entry["suppressed_before"] = self._suppressed
            self._suppressed = 0
        try:
            append_audit(self.log_file, **entry)
        except OSError as exc:  # the refusal stands; a log that cannot be written is logged here
            log.warning("could not append to the audit log: %s", exc)
