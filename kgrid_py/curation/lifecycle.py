"""Lifecycle of a published KO version: deprecate it, retire it, name its successor.

``status`` and ``successor`` live in the version's ``metadata.json`` (shelves and the activator
read them from there; ``metadata.json`` is not among the digested files, so the model files'
integrity is untouched). Dates the metadata has no field for live in
``<shelf>/.kgrid/lifecycle/<id>/<version>.json``: when it was deprecated and its sunset date.

Dates are stored in UTC: a date (``2027-06-30``, a UTC day) or a date-time converted to UTC and
written with ``Z`` (``2027-06-30T00:00:00+02:00`` is stored as ``2027-06-29T22:00:00Z``); anything
else is refused with :class:`~kgrid_py.curation.errors.InvalidDate` (HTTP 422). Records written by
older versions with an offset are still read safely.

Allowed changes: draft -> active | retired; active -> deprecated | retired;
deprecated -> active | retired. Retired is final: a retired version never serves again.
Deprecated versions keep serving (with ``Deprecation`` and ``Sunset`` headers, see
:meth:`LifecycleInfo.http_headers`); retired ones answer 410 with their successor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import format_datetime
from pathlib import Path

from kgrid_py.curation.audit import (
    append_audit,
    audit_path,
    lifecycle_record,
    recover,
    shelf_lock,
    state_dir,
    utc_now,
    write_json,
)
from kgrid_py.curation.errors import InvalidDate, LifecycleError
from kgrid_py.curation.publish import set_lifecycle_fields
from kgrid_py.digest import folder_identity
from kgrid_py.errors import NotFound
from kgrid_py.shelf import Reference, Shelf, ShelfEntry, resolve_among

__all__ = ["SETTABLE", "TRANSITIONS", "LifecycleInfo", "StatusChange", "lifecycle_info", "normalise_time", "set_status"]

TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"active", "retired"}),
    "active": frozenset({"deprecated", "retired"}),
    "deprecated": frozenset({"active", "retired"}),
    "retired": frozenset(),
}
SETTABLE = ("active", "deprecated", "retired")


@dataclass(frozen=True)
class LifecycleInfo:
    """A version's status, successor and dates, as the activator needs them for its headers."""

    status: str
    successor: str | None = None
    deprecated_at: str | None = None
    sunset: str | None = None

    def http_headers(self) -> dict[str, str]:
        """``Deprecation`` (RFC 9745, ``@<unix time>``) and ``Sunset`` (RFC 8594) for a deprecated version."""
        if self.status != "deprecated":
            return {}
        headers: dict[str, str] = {}
        if self.deprecated_at:
            headers["Deprecation"] = f"@{int(_parse_time(self.deprecated_at).timestamp())}"
        else:
            headers["Deprecation"] = "true"
        if self.sunset:
            headers["Sunset"] = format_datetime(_parse_time(self.sunset), usegmt=True)
        if self.successor:
            headers["Link"] = f'<{self.successor}>; rel="successor-version"'
        return headers


@dataclass(frozen=True)
class StatusChange:
    """What :func:`set_status` did."""

    ref: str
    previous: str
    status: str
    successor: str | None
    changed: bool


def set_status(
    shelf: Path,
    ref: str,
    status: str,
    actor: str,
    *,
    successor: str | None = None,
    sunset: str | None = None,
    audit_log: Path | None = None,
) -> StatusChange:
    """Set an exact version's (``id@X.Y.Z``) status, check the transition, and audit it.

    ``successor`` must name a servable version on the same shelf. Raises :class:`LifecycleError`
    (HTTP 409) for a forbidden change and :class:`~kgrid_py.errors.NotFound` (404) for a missing
    version. Setting the status a version already has is a no-op (``changed`` False).
    """
    shelf = Path(shelf)
    log = audit_log or audit_path(shelf)
    try:
        change = _set_locked(shelf, ref, status, successor, sunset)
    except Exception as exc:
        append_audit(log, actor=actor, action="status", ref=ref, status=status, outcome="refused", reason=str(exc))
        raise
    entry = _entry(shelf, ref)
    append_audit(
        log,
        actor=actor,
        action="status",
        ref=change.ref,
        previous=change.previous,
        status=change.status,
        successor=change.successor,
        digest=folder_identity(entry.path),
        outcome="changed" if change.changed else "unchanged",
    )
    return change


def _set_locked(shelf: Path, ref: str, status: str, successor: str | None, sunset: str | None) -> StatusChange:
    if status not in SETTABLE:
        raise LifecycleError(f"status must be one of {list(SETTABLE)}, not {status!r}")
    if sunset is not None:
        sunset = normalise_time(sunset)
    with shelf_lock(shelf):
        recover(shelf, locked=True)
        entry = _entry(shelf, ref)
        exact = f"{entry.ko_id}@{entry.version}"
        if successor is not None:
            successor = _check_successor(shelf, exact, successor)
        previous = entry.status
        if previous == status and (successor is None or successor == entry.successor) and sunset is None:
            return StatusChange(exact, previous, status, entry.successor, False)
        if previous != status and status not in TRANSITIONS.get(previous, frozenset()):
            raise LifecycleError(f"{exact} is {previous}; it cannot become {status}")
        fields = {"status": status} if successor is None else {"status": status, "successor": successor}
        raw = set_lifecycle_fields(entry.path, **fields)
        record_path = _record_path(shelf, entry.ko_id, entry.version)
        record = lifecycle_record(shelf, entry.ko_id, entry.version)
        if status == "deprecated" and previous != "deprecated":
            record["deprecated_at"] = utc_now()
        if status == "active":
            record.pop("deprecated_at", None)
        if sunset is not None:
            record["sunset"] = sunset
        if status == "retired":
            record["retired_at"] = utc_now()
        write_json(record_path, record)
        return StatusChange(exact, previous, status, raw.get("successor"), True)


def lifecycle_info(shelf: Path, ko_id: str, version: str) -> LifecycleInfo:
    """Status, successor and dates of one version (for the activator's headers and 410 bodies)."""
    entry = _entry(shelf, f"{ko_id}@{version}")
    record = lifecycle_record(Path(shelf), ko_id, version)
    return LifecycleInfo(entry.status, entry.successor, record.get("deprecated_at"), record.get("sunset"))


def _entry(shelf: Path, ref: str) -> ShelfEntry:
    reference = Reference.parse(ref)
    if not reference.is_exact:
        raise LifecycleError(f"a status change needs an exact version (id@X.Y.Z), not {ref!r}")
    return resolve_among(Shelf(shelf).entries(), reference)


def _check_successor(shelf: Path, exact: str, successor: str) -> str:
    try:
        target = resolve_among(Shelf(shelf).entries(), Reference.parse(successor))
    except NotFound as exc:
        raise LifecycleError(f"successor {successor!r} is not on the shelf: {exc}") from None
    if f"{target.ko_id}@{target.version}" == exact:
        raise LifecycleError(f"{exact} cannot be its own successor")
    if target.status not in ("active", "deprecated"):
        raise LifecycleError(f"successor {successor!r} resolves to {target.version}, which is {target.status}")
    return successor


def _record_path(shelf: Path, ko_id: str, version: str) -> Path:
    return state_dir(shelf) / "lifecycle" / ko_id / f"{version}.json"


def normalise_time(text: str) -> str:
    """A date or date-time as stored: ``YYYY-MM-DD`` (a UTC day) or ``YYYY-MM-DDTHH:MM:SSZ`` in UTC.

    Raises :class:`InvalidDate` for anything else, naming the forms accepted.
    """
    if not isinstance(text, str) or len(text) > 64:
        raise InvalidDate(f"{str(text)[:64]!r} is not an ISO date (YYYY-MM-DD) or date-time")
    moment = _parse_time(text)
    if _is_date(text):
        return text
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _is_date(text: str) -> bool:
    return len(text) == 10 and text[4] == "-" and text[7] == "-"


def _parse_time(text: str) -> datetime:
    """A date or date-time as an aware UTC datetime; :class:`InvalidDate` when it is neither."""
    if not isinstance(text, str):
        raise InvalidDate(f"{text!r} is not an ISO date (YYYY-MM-DD) or date-time")
    try:
        if _is_date(text):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError, TypeError):
        raise InvalidDate(
            f"{text[:64]!r} is not an ISO date (YYYY-MM-DD) or date-time (YYYY-MM-DDTHH:MM:SS, with Z or an offset)"
        ) from None
