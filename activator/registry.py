"""The KOs a server is serving: loaded from a shelf, swapped whole on reload.

A :class:`Snapshot` is immutable. A request takes the current one once and uses it to the end, so
a reload that publishes a new version never changes the version a request in flight runs on: the
old KO objects live on for as long as a request holds them. A reload reuses every KO whose folder
is unchanged (same files, sizes and modification times), so it only pays for what changed; a KO
that fails validation or its own test vectors is kept as :class:`FailedKO`, with the reason, and
the rest keep serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from activator.problems import without_paths
from kgrid_py.curation.audit import recover
from kgrid_py.errors import KgridError, NotFound
from kgrid_py.ko import KnowledgeObject
from kgrid_py.runtime import RuntimeSettings
from kgrid_py.shelf import Reference, Shelf, ShelfEntry, resolve_among

__all__ = ["FailedKO", "Registry", "Snapshot"]

log = logging.getLogger("activator")

Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class FailedKO:
    """A folder on the shelf that cannot be served, and why."""

    ko_id: str
    version: str | None
    path: Path
    reason: str
    status: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"id": self.ko_id, "version": self.version, "status": "failed", "reason": without_paths(self.reason)}


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the shelf: what is served, what is listed, what failed."""

    generation: int
    entries: list[ShelfEntry]
    kos: dict[tuple[str, str], KnowledgeObject]
    failed: list[FailedKO]
    loaded_at: float = field(default_factory=time.time)
    _resolved: dict[tuple[str, str | None], ShelfEntry] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(0, [], {}, [])

    @cached_property
    def ids(self) -> list[str]:
        return sorted({e.ko_id for e in self.entries} | {f.ko_id for f in self.failed})

    def versions(self, ko_id: str) -> list[ShelfEntry]:
        return [e for e in self.entries if e.ko_id == ko_id]

    def failures(self, ko_id: str) -> list[FailedKO]:
        return [f for f in self.failed if f.ko_id == ko_id]

    def resolve(self, ko_id: str, spec: str | None) -> ShelfEntry:
        """The entry a version, range or ``None`` (highest active) names. Raises NotFound."""
        key = (ko_id, spec)
        entry = self._resolved.get(key)
        if entry is None:
            entry = self._resolve(ko_id, spec)
            if len(self._resolved) < 4096:  # clients choose the keys: keep the cache bounded
                self._resolved[key] = entry
        return entry

    def _resolve(self, ko_id: str, spec: str | None) -> ShelfEntry:
        if ko_id not in self.ids:
            raise NotFound(f"no KO {ko_id!r}", available=self.ids)
        reference = Reference.parse(f"{ko_id}@{spec}" if spec else ko_id)
        if reference.is_exact:
            for failure in self.failures(ko_id):
                if failure.version == spec:
                    raise NotFound(
                        f"{ko_id} {spec} is on the shelf but is not served: {without_paths(failure.reason)}",
                        available=self.listing(ko_id),
                    )
        if not any(e.ko_id == ko_id for e in self.entries) and self.failures(ko_id):
            raise NotFound(f"{ko_id}: no version is served (all failed to load)", available=self.listing(ko_id))
        return resolve_among(self.entries, reference)

    def listing(self, ko_id: str) -> list[str]:
        rows = [f"{e.version} ({e.status})" for e in self.versions(ko_id)]
        rows += [f"{f.version} (failed)" for f in self.failures(ko_id) if f.version]
        return rows

    def ko(self, entry: ShelfEntry) -> KnowledgeObject:
        return self.kos[(entry.ko_id, entry.version)]

    def served(self) -> Iterator[tuple[ShelfEntry, KnowledgeObject]]:
        """Every active or deprecated version, in id then version order."""
        for entry in self.entries:
            if entry.status in ("active", "deprecated"):
                yield entry, self.kos[(entry.ko_id, entry.version)]


class Registry:
    """Loads a shelf into snapshots; :meth:`reload` swaps in a new one atomically."""

    def __init__(self, shelf: Path, runtime: RuntimeSettings, *, verify_vectors: bool = True) -> None:
        self.shelf = Shelf(shelf)
        self.runtime = runtime
        self.verify_vectors = verify_vectors
        self.current = Snapshot.empty()
        self.ready = False
        self._cache: dict[Path, tuple[Signature, KnowledgeObject | FailedKO | None]] = {}
        self._lock = threading.Lock()

    def _recover(self) -> None:
        """Finish publications a killed process left half-recorded, before serving what they made visible."""
        try:
            recover(self.shelf.root)
        except OSError as exc:  # a read-only shelf: serve it as it is
            log.warning("%s: could not recover interrupted publications: %s", self.shelf.root, exc)

    def reload(self) -> Snapshot:
        """Scan the shelf, load what changed, and publish the new snapshot. Blocking: run it in a thread."""
        with self._lock:
            started = time.perf_counter()
            self._recover()
            entries, broken = self.shelf.scan()
            failed = [_broken(self.shelf.root, b.path, b.reason) for b in broken]
            listed: list[ShelfEntry] = []
            kos: dict[tuple[str, str], KnowledgeObject] = {}
            seen: dict[tuple[str, str], Path] = {}
            cache: dict[Path, tuple[Signature, KnowledgeObject | FailedKO | None]] = {}
            for entry in entries:
                key = (entry.ko_id, entry.version)
                if key in seen:
                    failed.append(
                        FailedKO(entry.ko_id, entry.version, entry.path, f"duplicate of {seen[key]}", entry.status)
                    )
                    continue
                seen[key] = entry.path
                signature = folder_signature(entry.path)
                cached = self._cache.get(entry.path)
                outcome = cached[1] if cached is not None and cached[0] == signature else self._load(entry)
                cache[entry.path] = (signature, outcome)
                if isinstance(outcome, FailedKO):
                    failed.append(outcome)
                    continue
                listed.append(entry)
                if outcome is not None:
                    kos[key] = outcome
            self._cache = cache
            snapshot = Snapshot(self.current.generation + 1, listed, kos, failed)
            self.current = snapshot  # the swap: one reference assignment
            self.ready = True
            log.info(
                "shelf %s loaded (generation %d): %d served, %d failed, in %.0f ms",
                self.shelf.root,
                snapshot.generation,
                len(kos),
                len(failed),
                (time.perf_counter() - started) * 1000,
            )
            return snapshot

    def _load(self, entry: ShelfEntry) -> KnowledgeObject | FailedKO | None:
        if entry.status == "retired":
            return None  # listed, answered with 410 and its successor; never run
        try:
            ko = KnowledgeObject.from_path(entry.path, verify_vectors=self.verify_vectors, settings=self.runtime)
        except (KgridError, OSError, ValueError) as exc:
            log.warning("%s@%s not served: %s", entry.ko_id, entry.version, exc)
            return FailedKO(entry.ko_id, entry.version, entry.path, str(exc), entry.status)
        if (ko.id, ko.version) != (entry.ko_id, entry.version):
            return FailedKO(entry.ko_id, entry.version, entry.path, "metadata changed while loading", entry.status)
        return ko

    def signature(self) -> Signature:
        """What the watcher compares: every file under the shelf, with its size and mtime."""
        return folder_signature(self.shelf.root)


def folder_signature(root: Path) -> Signature:
    rows: list[tuple[str, int, int]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            rows.append((os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns))
    return tuple(rows)


def _broken(root: Path, path: Path, reason: str) -> FailedKO:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = path.parts
    ko_id = parts[0] if parts else str(path)
    version = parts[1] if len(parts) > 1 else None
    return FailedKO(ko_id, version, path, reason)


def describe(snapshot: Snapshot) -> dict[str, Any]:
    """What /ready and /admin/reload say about a snapshot: its generation, what is served, what failed."""
    return {
        "generation": snapshot.generation,
        "served": [f"{e.ko_id}@{e.version}" for e, _ in snapshot.served()],
        "failed": [f.as_dict() for f in snapshot.failed],
    }
