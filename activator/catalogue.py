"""What the web catalogue shows, read from a registry snapshot: one summary per KO, details per version.

Plain data for the templates (no HTML here): the pages stay dumb and these are testable on their
own. A retired version is listed but never loaded by the registry, so its metadata is read (and
schema-checked) from its folder here, once per snapshot generation.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activator.problems import without_paths
from activator.registry import Snapshot
from kgrid_py.curation.lifecycle import lifecycle_info
from kgrid_py.digest import folder_identity
from kgrid_py.errors import KgridError, NotFound
from kgrid_py.ko import read_metadata
from kgrid_py.metadata import Bounds, FieldSpec, FunctionSpec, KOMetadata
from kgrid_py.shelf import STATE_DIR, ShelfEntry

__all__ = [
    "KOSummary",
    "VersionView",
    "bounds_text",
    "interpretation",
    "signature_status",
    "summaries",
    "version_view",
]

STATUSES = ("active", "deprecated", "retired", "draft")
MAX_QUERY = 200


@dataclass(frozen=True)
class KOSummary:
    """One row of the catalogue: a KO and all its versions."""

    ko_id: str
    title: str
    description: str
    keywords: list[str]
    latest: str
    status: str
    default_version: str | None
    versions: list[tuple[str, str]]  # (version, status), highest first
    failed: list[str] = field(default_factory=list)

    def matches(self, query: str, keyword: str, status: str) -> bool:
        if status and status not in {s for _, s in self.versions}:
            return False
        if keyword and keyword.casefold() not in {k.casefold() for k in self.keywords}:
            return False
        if query:
            text = " ".join([self.ko_id, self.title, self.description, *self.keywords]).casefold()
            return all(word in text for word in query.casefold().split())
        return True


@dataclass(frozen=True)
class VersionView:
    """Everything a version page shows."""

    entry: ShelfEntry
    metadata: KOMetadata
    content_digest: str
    lifecycle: dict[str, Any]
    signature: str
    siblings: list[tuple[str, str]]
    served: bool


@functools.lru_cache(maxsize=256)
def _read(path: Path, generation: int) -> tuple[KOMetadata, str]:
    """Metadata and identity digest of a version the registry did not load (retired)."""
    raw, metadata = read_metadata(path)
    return metadata, folder_identity(path, raw)


def metadata_of(snapshot: Snapshot, entry: ShelfEntry) -> tuple[KOMetadata, str]:
    ko = snapshot.kos.get((entry.ko_id, entry.version))
    if ko is not None:
        return ko.metadata, ko.content_digest
    return _read(entry.path, snapshot.generation)


def summaries(snapshot: Snapshot) -> list[KOSummary]:
    """Every KO on the shelf, by id; its text comes from the default version (highest active), else the latest."""
    rows: list[KOSummary] = []
    for ko_id in snapshot.ids:
        entries = sorted(snapshot.versions(ko_id), key=lambda e: e.semver, reverse=True)
        failed = [f"{f.version or '?'}: {without_paths(f.reason)}" for f in snapshot.failures(ko_id)]
        try:
            default: ShelfEntry | None = snapshot.resolve(ko_id, None)
        except (NotFound, KgridError, ValueError):
            default = None
        shown = default or (entries[0] if entries else None)
        if shown is None:
            rows.append(KOSummary(ko_id, ko_id, "No version of this KO could be loaded.", [], "-", "failed", None, []))
            continue
        try:
            metadata, _ = metadata_of(snapshot, shown)
            title, description, keywords = metadata.title, metadata.description, list(metadata.keywords)
        except (KgridError, OSError) as exc:
            title, description, keywords = ko_id, f"Its metadata cannot be read: {without_paths(str(exc))}", []
        rows.append(
            KOSummary(
                ko_id=ko_id,
                title=title,
                description=description,
                keywords=keywords,
                latest=entries[0].version,
                status=shown.status,
                default_version=default.version if default else None,
                versions=[(e.version, e.status) for e in entries],
                failed=failed,
            )
        )
    return rows


def signature_status(shelf: Path, ko_id: str, version: str) -> str:
    """What the shelf's publication record says about the version's signature, in words."""
    path = Path(shelf) / STATE_DIR / "records" / ko_id / f"{version}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "No publication record: this version was placed on the shelf directly, not published."
    except (OSError, ValueError):
        return "The publication record cannot be read."
    if not isinstance(record, dict):
        return "The publication record cannot be read."
    if record.get("signer"):
        return f"Signed by {record['signer']}; the signature was verified against the trusted keys at publication."
    if record.get("signature"):
        return "Signed, but the signature was not checked at publication (the server had no trusted keys)."
    return "Published unsigned."


def version_view(snapshot: Snapshot, shelf: Path, entry: ShelfEntry) -> VersionView:
    metadata, digest = metadata_of(snapshot, entry)
    info = lifecycle_info(shelf, entry.ko_id, entry.version)
    lifecycle = {
        "status": info.status,
        "successor": info.successor,
        "deprecated_at": info.deprecated_at,
        "sunset": info.sunset,
    }
    siblings = [(e.version, e.status) for e in sorted(snapshot.versions(entry.ko_id), key=lambda e: e.semver)]
    return VersionView(
        entry=entry,
        metadata=metadata,
        content_digest=digest,
        lifecycle=lifecycle,
        signature=signature_status(shelf, entry.ko_id, entry.version),
        siblings=siblings,
        served=(entry.ko_id, entry.version) in snapshot.kos and entry.status in ("active", "deprecated"),
    )


def bounds_text(bounds: Bounds | None, unit: str | None) -> str:
    """``> 0 and <= 250 mL/min/{1.73_m2}``; empty when there are none."""
    if bounds is None:
        return ""
    parts = []
    if bounds.minimum is not None:
        parts.append(f"{'>' if bounds.exclusive_minimum else '≥'} {bounds.minimum:g}")
    if bounds.maximum is not None:
        parts.append(f"{'<' if bounds.exclusive_maximum else '≤'} {bounds.maximum:g}")
    text = " and ".join(parts)
    return f"{text} {unit}" if text and unit and unit != "1" else text


def units_of(spec: FieldSpec) -> list[str]:
    """The declared unit first, then every other unit the input accepts."""
    if spec.unit is None:
        return []
    return [spec.unit, *(u.unit for u in spec.accepted_units if u.unit != spec.unit)]


def interpretation(function: FunctionSpec) -> list[dict[str, Any]]:
    """The thresholds a clinician reads a result against: the function's CDS indicators, per output."""
    if function.cds is None:
        return []
    return [
        {"output": i.output, "warning": i.warning, "critical": i.critical, "reason": i.reason or ""}
        for i in function.cds.indicators
    ]
