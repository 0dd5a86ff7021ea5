"""KO archives: one zip per KO version, packed deterministically and unpacked defensively.

Layout: every file of the KO folder at its relative path, plus ``manifest.json`` (canonical JSON:
``{"format": "kgrid-archive/2", "id", "version", "files": {path: sha256}}``) and, once signed,
``signature.json`` (see :mod:`kgrid_py.curation.signing`). The manifest's sha256 is the KO version's
identity (:mod:`kgrid_py.digest`): what a signature covers, what the audit log records, and what
the loaded KO reports as its ``content_digest``. ``metadata.json``'s entry is the digest of its
canonical JSON without ``status`` and ``successor``, so publishing, deprecating or retiring a
version never changes its identity. Packing the same folder twice gives identical
bytes: entries are sorted, timestamps fixed at 1980-01-01, permissions fixed at 0644.

Unpacking trusts nothing: names are checked before any byte is written (no absolute paths, no
``..``, no backslashes, no duplicates, even by case), links and special files are refused, the
archive, each entry and the total expansion are capped, compression ratios are capped (zip
bombs), each file is hashed as it streams and must match the manifest, and every path the
metadata names must stay inside the KO.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kgrid_py.curation.errors import ArchiveDigestMismatch, ArchiveRejected, ArchiveTooLarge
from kgrid_py.digest import (
    MANIFEST_FORMAT,
    entry_digest,
    identity_digest,
    manifest_bytes,
    skipped,
)
from kgrid_py.digest import collect_files as _collect_files
from kgrid_py.ko import METADATA_FILE, read_metadata, verify_files
from kgrid_py.metadata import KO_ID_PATTERN, SEMVER_PATTERN
from kgrid_py.shelf import reserved_id_problem

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "ArchiveInfo",
    "ArchiveLimits",
    "check_metadata_paths",
    "check_model_references",
    "collect_files",
    "extract",
    "inspect",
    "pack",
    "replace_entry",
]

FORMAT = MANIFEST_FORMAT
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"
RESERVED = (MANIFEST_NAME, SIGNATURE_NAME)

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = stat.S_IFREG | 0o644
_CHUNK = 1 << 20
_MiB = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps applied before and while unpacking; anything over one is refused."""

    max_archive_bytes: int = 256 * _MiB
    max_file_bytes: int = 512 * _MiB
    max_total_bytes: int = 1024 * _MiB
    max_entries: int = 2000
    max_ratio: float = 100.0
    """Largest expanded/compressed ratio, per entry over 64 KiB and for the whole archive over 1 MiB."""
    max_manifest_bytes: int = 4 * _MiB


@dataclass(frozen=True)
class ArchiveInfo:
    """What an archive declares, checked for shape but not yet unpacked."""

    ko_id: str
    version: str
    files: dict[str, str]
    manifest_digest: str
    signature: dict[str, Any] | None
    metadata: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.ko_id}@{self.version}"


# -- packing --------------------------------------------------------------------------------------


def pack(ko_dir: Path) -> bytes:
    """Pack a valid, sealed KO folder into archive bytes (the same folder gives the same bytes).

    Refuses a folder whose metadata is invalid or whose digests are stale (run ``kgrid build
    --seal-only`` first), and any symlink in it. Hidden files and ``__pycache__`` are left out.
    """
    ko_dir = Path(ko_dir)
    raw, metadata = read_metadata(ko_dir)
    verify_files(ko_dir, metadata)
    check_metadata_paths(raw)
    contents = {name: path.read_bytes() for name, path in collect_files(ko_dir)}
    files = {name: entry_digest(name, data) for name, data in contents.items()}
    contents[MANIFEST_NAME] = manifest_bytes(metadata.identifier, metadata.version, files)
    return _write_zip(contents)


def collect_files(ko_dir: Path) -> list[tuple[str, Path]]:
    """The files a KO archive holds, sorted: no hidden files, no ``__pycache__``, no symlinks."""
    try:
        return _collect_files(ko_dir)
    except ValueError as exc:
        raise ArchiveRejected(str(exc)) from None


def _skipped(part: str) -> bool:
    return skipped(part)


def _write_zip(contents: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(contents):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.create_system = 3  # unix, so external_attr carries the mode
            info.external_attr = _FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, contents[name], compresslevel=9)
    return buffer.getvalue()


def replace_entry(data: bytes, name: str, content: bytes, limits: ArchiveLimits | None = None) -> bytes:
    """The same archive with entry ``name`` set to ``content`` (used to attach a signature)."""
    inspect(data, limits)  # only rewrite archives that are safe to read
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        contents = {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
    contents[name] = content
    return _write_zip(contents)


# -- reading --------------------------------------------------------------------------------------


def inspect(data: bytes, limits: ArchiveLimits | None = None) -> ArchiveInfo:
    """Check an archive's structure, manifest, signature entry and metadata paths; write nothing."""
    limits = limits or ArchiveLimits()
    with _open(data, limits) as archive:
        return _inspect(archive, len(data), limits)


def extract(data: bytes, dest: Path, limits: ArchiveLimits | None = None) -> ArchiveInfo:
    """Unpack into the new folder ``dest``, verifying every digest; on any refusal remove ``dest``.

    ``manifest.json`` and ``signature.json`` are not written into ``dest``: they describe the
    archive, not the KO. Nothing is ever written outside ``dest``.
    """
    limits = limits or ArchiveLimits()
    dest = Path(dest)
    dest.mkdir(parents=False, exist_ok=False)
    try:
        with _open(data, limits) as archive:
            info = _inspect(archive, len(data), limits)
            root = dest.resolve()
            for entry in archive.infolist():
                if entry.is_dir() or entry.filename in RESERVED:
                    continue
                _extract_one(archive, entry, root, info.files[entry.filename], limits)
        return info
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _open(data: bytes, limits: ArchiveLimits) -> zipfile.ZipFile:
    if len(data) > limits.max_archive_bytes:
        raise ArchiveTooLarge(f"archive is {len(data)} bytes, over the limit of {limits.max_archive_bytes}")
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ArchiveRejected(f"not a readable zip archive: {exc}") from None


def _inspect(archive: zipfile.ZipFile, archive_size: int, limits: ArchiveLimits) -> ArchiveInfo:
    entries = _check_entries(archive.infolist(), archive_size, limits)
    if MANIFEST_NAME not in entries:
        raise ArchiveRejected(f"archive has no {MANIFEST_NAME}")
    raw_manifest = _read_small(archive, entries[MANIFEST_NAME], limits.max_manifest_bytes)
    manifest = _parse_manifest(raw_manifest)
    declared = set(manifest["files"])
    present = set(entries) - set(RESERVED)
    if present - declared:
        raise ArchiveRejected(f"archive entries not in the manifest: {sorted(present - declared)[:5]}")
    if declared - present:
        raise ArchiveRejected(f"manifest lists files the archive lacks: {sorted(declared - present)[:5]}")
    if METADATA_FILE not in entries:
        raise ArchiveRejected(f"archive has no {METADATA_FILE}")
    metadata_bytes = _read_small(archive, entries[METADATA_FILE], limits.max_manifest_bytes)
    try:
        metadata = json.loads(metadata_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveRejected(f"{METADATA_FILE} is not valid JSON: {exc}") from None
    check_metadata_paths(metadata)
    if entry_digest(METADATA_FILE, metadata_bytes) != manifest["files"][METADATA_FILE]:
        raise ArchiveDigestMismatch(f"{METADATA_FILE}: content does not match its manifest digest", METADATA_FILE)
    if (metadata.get("dc:identifier"), metadata.get("dc:version")) != (manifest["id"], manifest["version"]):
        raise ArchiveRejected(
            f"manifest says {manifest['id']}@{manifest['version']} but metadata says "
            f"{metadata.get('dc:identifier')}@{metadata.get('dc:version')}"
        )
    signature = None
    if SIGNATURE_NAME in entries:
        try:
            signature = json.loads(_read_small(archive, entries[SIGNATURE_NAME], 64 * 1024))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArchiveRejected(f"{SIGNATURE_NAME} is not valid JSON: {exc}") from None
        if not isinstance(signature, dict):
            raise ArchiveRejected(f"{SIGNATURE_NAME} must be a JSON object")
    files = dict(manifest["files"])
    identity = identity_digest(manifest["id"], manifest["version"], files)
    return ArchiveInfo(manifest["id"], manifest["version"], files, identity, signature, metadata)


def _check_entries(
    infos: list[zipfile.ZipInfo], archive_size: int, limits: ArchiveLimits
) -> dict[str, zipfile.ZipInfo]:
    """Refuse unsafe names, links, duplicates, encryption and oversized or bomb-like entries."""
    if len(infos) > limits.max_entries:
        raise ArchiveTooLarge(f"archive has {len(infos)} entries, over the limit of {limits.max_entries}")
    files: dict[str, zipfile.ZipInfo] = {}
    folded: dict[str, str] = {}
    dirs: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        _check_name(name.rstrip("/") if info.is_dir() else name)
        if any(_skipped(part) for part in name.rstrip("/").split("/")):
            raise ArchiveRejected(f"{name}: hidden files and caches are not part of a KO archive")
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise ArchiveRejected(f"{name}: symlinks are not allowed in a KO archive")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveRejected(f"{name}: only regular files are allowed (special file type {oct(kind)})")
        if info.flag_bits & 0x1:
            raise ArchiveRejected(f"{name}: encrypted entries are not allowed")
        if info.is_dir():
            continue
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveRejected(f"{name}: unsupported compression method {info.compress_type}")
        key = unicodedata.normalize("NFC", name).casefold()  # what a case-insensitive disk would merge
        if key in folded:
            raise ArchiveRejected(f"duplicate entry {name!r} (clashes with {folded[key]!r})")
        folded[key] = name
        files[name] = info
        parts = name.split("/")
        dirs.update(unicodedata.normalize("NFC", "/".join(parts[:i])).casefold() for i in range(1, len(parts)))
        if info.file_size > limits.max_file_bytes:
            raise ArchiveTooLarge(
                f"{name}: expands to {info.file_size} bytes, over the limit of {limits.max_file_bytes}"
            )
        if info.file_size > 64 * 1024 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise ArchiveTooLarge(
                f"{name}: compression ratio {info.file_size / max(info.compress_size, 1):.0f}:1 is over "
                f"{limits.max_ratio:.0f}:1 (a zip bomb?)"
            )
        total += info.file_size
    clashes = dirs & set(folded)
    if clashes:
        raise ArchiveRejected(f"entry {folded[sorted(clashes)[0]]!r} is both a file and a folder")
    if total > limits.max_total_bytes:
        raise ArchiveTooLarge(f"archive expands to {total} bytes, over the limit of {limits.max_total_bytes}")
    if total > _MiB and total > limits.max_ratio * max(archive_size, 1):
        raise ArchiveTooLarge(
            f"archive of {archive_size} bytes expands to {total} bytes, a ratio over {limits.max_ratio:.0f}:1 "
            "(a zip bomb?)"
        )
    return files


def _check_name(name: str, what: str = "entry") -> None:
    """A safe relative POSIX path: no absolute or drive paths, no ``..``/``.``, no backslash or NUL."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "is empty"
    elif "\\" in name or "\x00" in name:
        problem = "contains a backslash or NUL"
    elif name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        problem = "is an absolute path"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "has an empty, '.' or '..' component"
    if problem:
        raise ArchiveRejected(f"{what} {name!r} {problem}: paths must be relative and stay inside the KO")


def check_metadata_paths(raw: Any) -> None:
    """Refuse metadata whose files, models or test-vector file point outside the KO."""
    if not isinstance(raw, dict):
        raise ArchiveRejected(f"{METADATA_FILE} must be a JSON object")
    paths: list[tuple[str, Any]] = []
    for i, entry in enumerate(raw.get("files") or []):
        if isinstance(entry, dict) and "path" in entry:
            paths.append((f"files[{i}].path", entry["path"]))
    for i, function in enumerate(raw.get("functions") or []):
        if isinstance(function, dict) and "model" in function:
            paths.append((f"functions[{i}].model", function["model"]))
    if raw.get("tests") is not None:
        paths.append(("tests", raw["tests"]))
    for where, value in paths:
        if not isinstance(value, str):
            raise ArchiveRejected(f"{METADATA_FILE} {where} must be a string")
        _check_name(value, f"{METADATA_FILE} {where}")


def check_model_references(ko_dir: Path, raw: dict[str, Any]) -> None:
    """Refuse ONNX models whose external-data tensors point outside the KO or at unlisted files.

    ONNX lets a tensor's bytes live in another file named by a relative path; unchecked, a model
    could make the runtime read any file on the server, or data nobody digested.
    """
    import onnx

    listed = {entry.get("path") for entry in raw.get("files") or [] if isinstance(entry, dict)}
    for entry in raw.get("files") or []:
        path = entry.get("path", "") if isinstance(entry, dict) else ""
        if not str(path).endswith(".onnx"):
            continue
        try:
            model = onnx.load(str(Path(ko_dir) / path), load_external_data=False)
        except Exception as exc:  # onnx raises protobuf's DecodeError and others
            raise ArchiveRejected(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from None
        base = Path(path).parent
        for tensor in _tensors(model.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            _check_name(location, f"{path}: external data of tensor {tensor.name!r}")
            target = (base / location).as_posix()
            if ".." in target.split("/") or target not in listed:
                raise ArchiveRejected(
                    f"{path}: tensor {tensor.name!r} reads external data {location!r}, which metadata does not list"
                )


def _tensors(graph: Any) -> Iterable[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _read_small(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    if info.file_size > cap:
        raise ArchiveTooLarge(f"{info.filename}: {info.file_size} bytes, over the limit of {cap}")
    try:
        with archive.open(info) as handle:
            data = handle.read(cap + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise ArchiveRejected(f"{info.filename}: cannot be read: {exc}") from None
    if len(data) > cap:
        raise ArchiveTooLarge(f"{info.filename}: over the limit of {cap} bytes")
    return data


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveRejected(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
    if isinstance(manifest, dict) and manifest.get("format") == "kgrid-archive/1":
        raise ArchiveRejected(
            f"{MANIFEST_NAME} is a kgrid-archive/1 manifest (an older kgrid); repack the KO folder with `kgrid pack`"
        )
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveRejected(f"{MANIFEST_NAME} is not a {FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()
    ):
        raise ArchiveRejected(f"{MANIFEST_NAME}: 'files' must map paths to sha256 hex digests")
    if not isinstance(manifest.get("id"), str) or not re.match(KO_ID_PATTERN, manifest["id"]):
        raise ArchiveRejected(f"{MANIFEST_NAME}: 'id' must be a KO id (lowercase letters, digits, '-')")
    reserved = reserved_id_problem(manifest["id"])
    if reserved:
        raise ArchiveRejected(reserved)
    if not isinstance(manifest.get("version"), str) or not re.match(SEMVER_PATTERN, manifest["version"]):
        raise ArchiveRejected(f"{MANIFEST_NAME}: 'version' must be a semantic version")
    for name in files:
        _check_name(name, "manifest path")
    return manifest


def _extract_one(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, digest: str, limits: ArchiveLimits
) -> None:
    target = root.joinpath(*info.filename.split("/"))
    if not target.resolve().is_relative_to(root):  # belt and braces: names were checked already
        raise ArchiveRejected(f"{info.filename}: would be written outside the KO folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    hasher = hashlib.sha256()
    written = 0
    fd = os.open(target, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as out, archive.open(info) as source:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size or written > limits.max_file_bytes:
                    raise ArchiveTooLarge(f"{info.filename}: expands beyond its declared size")
                hasher.update(chunk)
                out.write(chunk)
    except ArchiveRejected:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error) as exc:  # CRC, truncated or corrupt data
        raise ArchiveRejected(f"{info.filename}: corrupt entry: {exc}") from None
    actual = hasher.hexdigest()
    if info.filename == METADATA_FILE:  # recorded by content, without its lifecycle fields
        try:
            actual = entry_digest(METADATA_FILE, target.read_bytes())
        except (UnicodeDecodeError, ValueError):
            actual = ""
    if actual != digest:
        raise ArchiveDigestMismatch(
            f"{info.filename}: content does not match its manifest digest (changed or corrupted)", info.filename
        )
