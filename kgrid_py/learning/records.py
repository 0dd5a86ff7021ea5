"""What one captured call is: the row of the ``calls`` table, as a plain dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["CHANNELS", "COLUMNS", "STATUSES", "CallRecord"]

CHANNELS = ("library", "kgrid-1", "kgrid-2", "oip", "cds-hooks", "batch")
STATUSES = ("ok", "refused", "error")


@dataclass(slots=True)
class CallRecord:
    """One call, refused calls included. JSON columns hold JSON text, already encoded.

    ``inputs_received`` is what the caller sent; ``inputs_used`` what the model was fed after
    unit conversion (canonical units, labels as their codes); ``subject_key`` is a keyed hash,
    never a patient id (:mod:`kgrid_py.learning.subjects`).
    """

    id: str
    ts_us: int
    site: str
    channel: str
    caller: str
    ko_id: str
    version: str
    content_digest: str
    model_digest: str
    function: str
    inputs_received: str
    inputs_used: str
    warnings: str
    status: str
    latency_us: int
    subject_key: str | None = None
    outputs: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"unknown capture channel {self.channel!r} (one of {', '.join(CHANNELS)})")
        if self.status not in STATUSES:
            raise ValueError(f"unknown capture status {self.status!r} (one of {', '.join(STATUSES)})")

    def row(self) -> dict[str, Any]:
        """The ``calls`` row: every column, nothing else."""
        return {name: getattr(self, name) for name in COLUMNS}


COLUMNS = tuple(f.name for f in fields(CallRecord))
