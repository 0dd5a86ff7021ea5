"""Shelves: folders of many KOs and versions, and the references that pick one.

A reference is ``id`` (the highest active version), ``id@RANGE`` with an npm-style semver range
(``kfre@1``, ``kfre@^1.2``, ``kfre@>=1.0.0 <2``), ``id@X.Y.Z`` (exactly that version), or a path
to a KO folder. Versions compare as semantic versions, never as strings: 1.10.0 > 1.9.0.

Lifecycle: a reference without an exact version never resolves to a retired version (nor to a
draft). Loading a retired version, even by exact pin or path, raises
:class:`~kgrid_py.errors.RetiredVersion` naming its successor unless ``allow_retired=True``;
loading a deprecated one issues a :class:`DeprecationWarning`, and each of its results carries a
warning naming the successor and the sunset date.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import semantic_version

from kgrid_py.digest import folder_identity
from kgrid_py.errors import IntegrityError, KgridError, NotFound, RetiredVersion
from kgrid_py.ko import METADATA_FILE, KnowledgeObject
from kgrid_py.metadata import KO_ID_PATTERN

__all__ = [
    "DEFAULT_SHELF",
    "RESERVED_IDS",
    "Reference",
    "Shelf",
    "ShelfEntry",
    "default_shelf_path",
    "load",
    "reserved_id_problem",
]

DEFAULT_SHELF = "knowledge_objects"
STATE_DIR = ".kgrid"
"""A shelf's own bookkeeping folder (never scanned: dot folders are skipped); curation writes it."""
SERVABLE = ("active", "deprecated")
RESERVED_IDS = frozenset(
    {
        *("admin", "capture", "cds-services", "docs", "endpoints", "federation", "health", "kos", "metrics"),
        *("outcomes", "ready", "static", "ui", "v2"),
    }
)
"""KO ids refused at publication: the activator's own top-level routes (``/metrics``, ``/kos``, ...)
would shadow or be shadowed by ``/{id}/{version}/{endpoint}``."""

log = logging.getLogger("kgrid_py")


def reserved_id_problem(ko_id: str) -> str | None:
    """Why ``ko_id`` cannot be a KO id on a served shelf, or None when it can."""
    if ko_id in RESERVED_IDS:
        return f"KO id {ko_id!r} is reserved: it is one of the activator's own routes (/{ko_id}); choose another id"
    return None


def default_shelf_path() -> Path:
    """``KGRID_SHELF`` if set, else ``./knowledge_objects``."""
    return Path(os.environ.get("KGRID_SHELF", DEFAULT_SHELF))


class InvalidReference(KgridError, ValueError):
    """Raised when a KO reference cannot be parsed."""


@dataclass(frozen=True)
class Reference:
    """A parsed ``id[@version-or-range]``."""

    ko_id: str
    spec: str | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        ko_id, _, spec = text.partition("@")
        if not re.match(KO_ID_PATTERN, ko_id):
            raise InvalidReference(f"invalid KO reference {text!r}: expected id, id@version or id@range")
        spec = spec.strip() or None
        if spec is not None:
            try:
                semantic_version.NpmSpec(spec)
            except ValueError:
                raise InvalidReference(f"invalid version or range {spec!r} in {text!r}") from None
        return cls(ko_id, spec)

    @property
    def is_exact(self) -> bool:
        if self.spec is None:
            return False
        try:
            semantic_version.Version(self.spec)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class ShelfEntry:
    """What a shelf knows about one KO version without loading it."""

    ko_id: str
    version: str
    status: str
    path: Path
    successor: str | None = None

    @property
    def semver(self) -> semantic_version.Version:
        return semantic_version.Version(self.version)


@dataclass(frozen=True)
class BrokenEntry:
    """A folder on the shelf whose metadata cannot even be read."""

    path: Path
    reason: str


class Shelf:
    """A folder of KOs: ``<id>/<version>/metadata.json`` (or any folder holding metadata.json)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def scan(self) -> tuple[list[ShelfEntry], list[BrokenEntry]]:
        """Every KO version on the shelf, sorted by id then semantic version, and the broken ones."""
        if not self.root.is_dir():
            raise NotFound(f"no shelf at {self.root}")
        entries: list[ShelfEntry] = []
        broken: list[BrokenEntry] = []
        for file in sorted(self.root.rglob(METADATA_FILE)):
            if any(part.startswith((".", "_")) for part in file.relative_to(self.root).parts[:-1]):
                continue
            try:
                raw = json.loads(file.read_text(encoding="utf-8"))
                entry = ShelfEntry(
                    raw["dc:identifier"],
                    raw["dc:version"],
                    raw.get("status", "draft"),
                    file.parent,
                    raw.get("successor"),
                )
                entry.semver  # noqa: B018 - validates the version string
            except (OSError, ValueError, KeyError, TypeError) as exc:
                broken.append(BrokenEntry(file.parent, f"unreadable metadata: {exc}"))
                continue
            entries.append(entry)
        entries.sort(key=lambda e: (e.ko_id, e.semver))
        return entries, broken

    def entries(self) -> list[ShelfEntry]:
        return self.scan()[0]

    def versions(self, ko_id: str) -> list[ShelfEntry]:
        return [e for e in self.entries() if e.ko_id == ko_id]

    def resolve(self, ref: str | Reference) -> ShelfEntry:
        """The version a reference names: an exact pin, else the highest servable match."""
        reference = ref if isinstance(ref, Reference) else Reference.parse(ref)
        entries = self.entries()
        return resolve_among(entries, reference)

    def load(self, ref: str | Reference, *, allow_retired: bool = False, **options: Any) -> KnowledgeObject:
        """Load what ``ref`` names; a retired version only with ``allow_retired`` (see the module docstring)."""
        entry = self.resolve(ref)
        return _load_checked(entry.path, self.root, allow_retired, options, stacklevel=3)


def _load_checked(
    path: Path, shelf: Path | None, allow_retired: bool, options: dict[str, Any], stacklevel: int
) -> KnowledgeObject:
    """Load a KO folder, refusing a retired version and warning about a deprecated one."""
    try:
        raw = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
        status, successor = raw.get("status"), raw.get("successor")
        ref = f"{raw.get('dc:identifier')}@{raw.get('dc:version')}"
    except (OSError, ValueError, AttributeError):
        status = None  # from_path reports what is wrong with it
    if status == "retired" and not allow_retired:
        raise RetiredVersion(ref, successor)
    sunset = None
    if status == "deprecated" and shelf is not None:
        sunset = lifecycle_record(shelf, str(raw.get("dc:identifier")), str(raw.get("dc:version"))).get("sunset")
    ko = KnowledgeObject.from_path(path, sunset=sunset, **options)
    if shelf is not None and ko.metadata.lineage:
        _verify_parent(shelf, ko)
    if ko.deprecation:
        warnings.warn(ko.deprecation, DeprecationWarning, stacklevel=stacklevel)
    return ko


def _verify_parent(shelf: Path, ko: KnowledgeObject) -> None:
    """A derived version's parent, when on this shelf, must still have the digest its lineage names."""
    last = ko.metadata.lineage[-1]  # type: ignore[index]
    parent_id, _, parent_version = last.parent.partition("@")
    folder = shelf / parent_id / parent_version
    if (folder / METADATA_FILE).is_file() and folder_identity(folder) != last.parent_digest:
        raise IntegrityError(f"{ko.ref}: its parent {last.parent} on this shelf has changed since it was derived")


def lifecycle_record_path(shelf: Path, ko_id: str, version: str) -> Path:
    """Where :mod:`kgrid_py.curation.lifecycle` keeps a version's dates."""
    return Path(shelf) / STATE_DIR / "lifecycle" / ko_id / f"{version}.json"


def lifecycle_record(shelf: Path, ko_id: str, version: str) -> dict[str, Any]:
    """A version's dates (``deprecated_at``, ``sunset``, ``retired_at``); {} when none or unreadable.

    :mod:`kgrid_py.curation.lifecycle` writes them to ``<shelf>/.kgrid/lifecycle/<id>/<version>.json``.
    """
    path = lifecycle_record_path(shelf, ko_id, version)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def resolve_among(entries: list[ShelfEntry], reference: Reference) -> ShelfEntry:
    """Pick from ``entries`` what ``reference`` names (shared by shelves and the activator)."""
    versions = [e for e in entries if e.ko_id == reference.ko_id]
    if not versions:
        raise NotFound(f"no KO {reference.ko_id!r}", available=sorted({e.ko_id for e in entries}))
    listing = [f"{e.version} ({e.status})" for e in versions]
    if reference.is_exact:
        wanted = semantic_version.Version(reference.spec)  # type: ignore[arg-type]
        for entry in versions:
            if entry.semver == wanted:
                return entry
        raise NotFound(f"{reference.ko_id} has no version {reference.spec}", available=listing)
    spec = semantic_version.NpmSpec(reference.spec or "*")
    matching = [e for e in versions if spec.match(e.semver)]
    for wanted_status in SERVABLE:
        candidates = [e for e in matching if e.status == wanted_status]
        if candidates:
            return max(candidates, key=lambda e: e.semver)
    what = f"matching {reference.spec!r}" if reference.spec else "that is active or deprecated"
    raise NotFound(f"{reference.ko_id} has no version {what}", available=listing)


def load(
    ref: str | os.PathLike[str],
    shelf: str | os.PathLike[str] | None = None,
    *,
    verify_vectors: bool = False,
    allow_retired: bool = False,
    stacklevel: int = 2,
) -> KnowledgeObject:
    """Load a KO by reference (``kfre``, ``kfre@1``, ``kfre@^1.2``, ``kfre@1.0.0``) or by path, from a local shelf.

    The shelf is ``shelf``, else ``$KGRID_SHELF``, else ``./knowledge_objects``. A KGrid manifest
    URL is not a local shelf: :func:`kgrid_py.load` syncs one first (through the curation package's
    publishing checks) and then calls this. ``stacklevel`` places the ``DeprecationWarning`` at
    the caller's line.

    Raises :class:`~kgrid_py.errors.RetiredVersion` for a retired version unless ``allow_retired``
    (a reference without an exact version never picks one); warns (``DeprecationWarning``) for a
    deprecated one, whose results then carry a warning naming its successor and sunset.
    """
    text = os.fspath(ref)
    candidate = Path(text)
    options: dict[str, Any] = {"verify_vectors": verify_vectors}
    if ("/" in text or os.sep in text or text.startswith(".")) and (candidate / METADATA_FILE).exists():
        return _load_checked(candidate, None, allow_retired, options, stacklevel=stacklevel + 1)
    where = os.fspath(shelf) if shelf is not None else os.environ.get("KGRID_SHELF", DEFAULT_SHELF)
    if is_manifest_url(where):
        raise InvalidReference(f"{where} is a KGrid manifest URL, not a shelf folder: load it with kgrid_py.load")
    shelf_ = Shelf(where)
    return _load_checked(shelf_.resolve(text).path, shelf_.root, allow_retired, options, stacklevel=stacklevel + 1)


def is_manifest_url(where: str) -> bool:
    """Whether a shelf setting names a remote KGrid manifest rather than a folder."""
    return where.startswith(("http://", "https://"))
