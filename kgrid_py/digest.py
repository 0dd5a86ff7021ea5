"""sha256 digests of files and of canonical JSON, and the one identity digest of a KO version.

A KO version's identity is the sha256 of its archive manifest (canonical JSON)::

    {"format": "kgrid-archive/2", "id": ..., "version": ..., "files": {path: sha256, ...}}

where ``files`` lists every file of the KO folder (hidden files and ``__pycache__`` excepted) with
its sha256, except ``metadata.json``, whose entry is the sha256 of its canonical JSON *without*
the lifecycle fields (``status``, ``successor``). That one number is what ``kgrid pack`` writes,
what ``kgrid sign`` signs, what ``kgrid validate``/``kgrid info`` print, what every result's
provenance and the activator's ``info`` carry, and it stays the same when a version is published
(draft -> active), deprecated or retired: lifecycle state is a decision about a version, not part
of it. Sunset and deprecation dates live outside the KO folder altogether.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "LIFECYCLE_FIELDS",
    "MANIFEST_FORMAT",
    "canonical_json",
    "collect_files",
    "entry_digest",
    "folder_identity",
    "identity_digest",
    "manifest_bytes",
    "metadata_digest",
    "sha256_bytes",
    "sha256_file",
    "skipped",
]

MANIFEST_FORMAT = "kgrid-archive/2"
LIFECYCLE_FIELDS = ("status", "successor")
"""Metadata fields that change over a version's life and so are left out of its identity."""
_METADATA_FILE = "metadata.json"
_ARCHIVE_ONLY = ("manifest.json", "signature.json")
_SKIPPED_DIRS = {"__pycache__"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the same value always hashes the same."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def metadata_digest(raw: Mapping[str, Any]) -> str:
    """The sha256 of canonical metadata without :data:`LIFECYCLE_FIELDS` (its manifest entry)."""
    return sha256_bytes(canonical_json({k: v for k, v in raw.items() if k not in LIFECYCLE_FIELDS}))


def entry_digest(name: str, data: bytes) -> str:
    """The digest a manifest records for file ``name``: ``metadata.json`` by content, the rest by bytes.

    Raises ``ValueError`` when ``metadata.json`` is not a JSON object.
    """
    if name != _METADATA_FILE:
        return sha256_bytes(data)
    raw = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError(f"{_METADATA_FILE} must be a JSON object")
    return metadata_digest(raw)


def manifest_bytes(ko_id: str, version: str, files: Mapping[str, str]) -> bytes:
    """The canonical manifest of a KO version (what an archive carries as ``manifest.json``)."""
    return canonical_json({"format": MANIFEST_FORMAT, "id": ko_id, "version": version, "files": dict(files)})


def identity_digest(ko_id: str, version: str, files: Mapping[str, str]) -> str:
    """A KO version's identity: the sha256 of :func:`manifest_bytes`."""
    return sha256_bytes(manifest_bytes(ko_id, version, files))


def collect_files(ko_dir: Path) -> list[tuple[str, Path]]:
    """The files a KO folder is made of, sorted: no hidden files, no ``__pycache__``, no links.

    Raises ``ValueError`` for a symlink, a special file, or a file named like an archive entry
    (``manifest.json``, ``signature.json``); :mod:`kgrid_py.curation.archive` turns it into a refusal.
    """
    ko_dir = Path(ko_dir)
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(ko_dir, followlinks=False):
        base = Path(root)
        for name in list(dirs):
            if (base / name).is_symlink():
                raise ValueError(f"{(base / name).relative_to(ko_dir)}: symlinks cannot be packed")
        dirs[:] = sorted(d for d in dirs if not skipped(d))
        for name in files:
            path = base / name
            rel = path.relative_to(ko_dir).as_posix()
            if skipped(name):
                continue
            if path.is_symlink() or not path.is_file():
                raise ValueError(f"{rel}: only regular files can be packed (symlink or special file)")
            if rel in _ARCHIVE_ONLY:
                raise ValueError(f"{rel}: the name is reserved for the archive itself")
            found.append((rel, path))
    return sorted(found)


def skipped(part: str) -> bool:
    """Whether a path component is left out of a KO (hidden, a cache, compiled Python)."""
    return part.startswith(".") or part in _SKIPPED_DIRS or part.endswith(".pyc")


def folder_identity(ko_dir: Path, raw: Mapping[str, Any] | None = None, known: Mapping[str, str] | None = None) -> str:
    """The identity digest of a KO folder (see the module docstring).

    ``raw`` is its parsed ``metadata.json`` when the caller has it; ``known`` maps paths to digests
    the caller has already verified (a loaded KO's listed files), which are then not re-read.
    """
    ko_dir = Path(ko_dir)
    if raw is None:
        raw = json.loads((ko_dir / _METADATA_FILE).read_text(encoding="utf-8"))
    known = known or {}
    files: dict[str, str] = {}
    for name, path in collect_files(ko_dir):
        if name == _METADATA_FILE:
            files[name] = metadata_digest(raw)
        else:
            files[name] = known.get(name) or sha256_file(path)
    return identity_digest(str(raw.get("dc:identifier")), str(raw.get("dc:version")), files)
