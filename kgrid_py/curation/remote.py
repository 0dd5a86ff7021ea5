"""Remote shelves: read a KGrid manifest, download its archives, verify them, cache by digest.

A KGrid manifest is JSON in one of two shapes (both are read)::

    {"manifest": ["https://host/kos/kfre-1.0.0.zip", "relative/other.zip"]}
    [{"@id": "kfre/1.0.0", "url": "https://host/kos/kfre-1.0.0.zip", "sha256": "<optional>"}]

Relative URLs resolve against the manifest's URL; only http and https are fetched. Downloads
are capped at the archive size limit while they stream. Archives are cached as
``<cache>/archives/<sha256>.zip``; an item that states its ``sha256`` is served from the cache
without a download, and a download that does not match a stated digest is refused. Each archive
then goes through :func:`kgrid_py.curation.publish.publish_archive` into ``<cache>/shelf``, so a remote KO
passes exactly the checks a local publication does (digests, signature policy, metadata,
immutability, test vectors) before anything can load it::

    shelf = remote.sync("https://host/manifest.json", Path("~/.cache/kgrid")).shelf
    ko = kgrid_py.load("kfre@1", shelf=shelf)
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import requests

from kgrid_py.curation.archive import ArchiveLimits
from kgrid_py.curation.errors import ArchiveDigestMismatch, ArchiveTooLarge, RemoteError
from kgrid_py.curation.publish import PublishOutcome, PublishPolicy, publish_archive
from kgrid_py.digest import sha256_bytes
from kgrid_py.errors import KgridError
from kgrid_py.ko import KnowledgeObject
from kgrid_py.shelf import DEFAULT_SHELF, Shelf, is_manifest_url

__all__ = [
    "RemoteItem",
    "SyncResult",
    "fetch_archive",
    "fetch_manifest",
    "load",
    "local_shelf",
    "parse_manifest",
    "sync",
]

TIMEOUT = (5.0, 60.0)
_MAX_MANIFEST_BYTES = 4 << 20


@dataclass(frozen=True)
class RemoteItem:
    """One archive a manifest lists."""

    url: str
    ko_id: str | None = None
    sha256: str | None = None


@dataclass
class SyncResult:
    """The local shelf a manifest was synced into, what was published, and what was refused."""

    shelf: Path
    published: list[PublishOutcome] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def parse_manifest(document: Any, base_url: str) -> list[RemoteItem]:
    """The archives a KGrid manifest (either shape) lists, with absolute URLs."""
    if isinstance(document, dict) and isinstance(document.get("manifest"), list):
        raw_items: list[Any] = document["manifest"]
    elif isinstance(document, list):
        raw_items = document
    else:
        raise RemoteError('a KGrid manifest is {"manifest": [urls]} or a list of {"@id", "url"} objects')
    items = []
    for i, raw in enumerate(raw_items):
        if isinstance(raw, str):
            url, ko_id, digest = raw, None, None
        elif isinstance(raw, dict) and isinstance(raw.get("url"), str):
            url, ko_id, digest = raw["url"], raw.get("@id"), raw.get("sha256")
        else:
            raise RemoteError(f"manifest item {i} is neither a URL nor an object with a 'url'")
        absolute = urljoin(base_url, url)
        if urlparse(absolute).scheme not in ("http", "https"):
            raise RemoteError(f"manifest item {i}: only http(s) URLs are fetched, not {absolute!r}")
        if digest is not None:  # it names a cache file: anything but hex could point outside the cache
            if not isinstance(digest, str) or not re.fullmatch("[0-9a-fA-F]{64}", digest):
                raise RemoteError(f"manifest item {i}: 'sha256' must be 64 hex digits")
            digest = digest.lower()
        items.append(RemoteItem(absolute, ko_id if isinstance(ko_id, str) else None, digest))
    return items


def fetch_manifest(url: str, session: requests.Session | None = None) -> list[RemoteItem]:
    data = _get(url, _MAX_MANIFEST_BYTES, session)
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise RemoteError(f"{url}: not a JSON manifest ({exc})") from None
    return parse_manifest(document, url)


def fetch_archive(
    item: RemoteItem, cache_dir: Path, session: requests.Session | None = None, limits: ArchiveLimits | None = None
) -> bytes:
    """The archive's bytes, from the cache when its digest is known and cached, else downloaded."""
    limits = limits or ArchiveLimits()
    archives = Path(cache_dir) / "archives"
    if item.sha256:
        cached = archives / f"{item.sha256}.zip"
        if cached.is_file():
            data = cached.read_bytes()
            if sha256_bytes(data) == item.sha256:
                return data
            cached.unlink()  # a corrupted cache entry: fetch it again
    data = _get(item.url, limits.max_archive_bytes, session)
    digest = sha256_bytes(data)
    if item.sha256 and digest != item.sha256:
        raise ArchiveDigestMismatch(f"{item.url}: download does not match the manifest's sha256", item.url)
    archives.mkdir(parents=True, exist_ok=True)
    target = archives / f"{digest}.zip"
    if not target.exists():
        temp = archives / f".{digest}.{secrets.token_hex(4)}.tmp"
        temp.write_bytes(data)
        os.replace(temp, target)
    return data


def sync(
    manifest_url: str,
    cache_dir: Path,
    policy: PublishPolicy | None = None,
    session: requests.Session | None = None,
    *,
    strict: bool = False,
) -> SyncResult:
    """Fetch every archive a manifest lists and publish it into ``<cache_dir>/shelf``.

    A refused archive is recorded in ``refused`` (URL, reason) and the others go on, unless
    ``strict``, which raises the first refusal.
    """
    policy = policy or PublishPolicy()
    result = SyncResult(Path(cache_dir) / "shelf")
    for item in fetch_manifest(manifest_url, session):
        try:
            data = fetch_archive(item, cache_dir, session, policy.limits)
            result.published.append(publish_archive(data, result.shelf, policy, actor=f"remote:{manifest_url}"))
        except KgridError as exc:
            if strict:
                raise
            result.refused.append((item.url, str(exc)))
    result.shelf.mkdir(parents=True, exist_ok=True)
    return result


def local_shelf(where: str | os.PathLike[str] | None) -> str:
    """A shelf setting as a local folder: a manifest URL is synced into ``$KGRID_CACHE`` (else
    ``~/.cache/kgrid-py``) first; anything else (None: ``$KGRID_SHELF``, else ``knowledge_objects``)
    is returned as it is."""
    text = os.fspath(where) if where is not None else os.environ.get("KGRID_SHELF", DEFAULT_SHELF)
    if not is_manifest_url(text):
        return text
    cache = Path(os.environ.get("KGRID_CACHE") or Path.home() / ".cache" / "kgrid-py")
    return os.fspath(sync(text, cache).shelf)


def load(ref: str, manifest_url: str, cache_dir: Path, policy: PublishPolicy | None = None) -> KnowledgeObject:
    """Sync a remote manifest into the cache, then load ``ref`` from it."""
    return Shelf(sync(manifest_url, cache_dir, policy).shelf).load(ref)


def _get(url: str, cap: int, session: requests.Session | None) -> bytes:
    getter = session or requests
    try:
        with getter.get(url, stream=True, timeout=TIMEOUT) as response:
            if response.status_code != 200:
                raise RemoteError(f"{url}: HTTP {response.status_code}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise ArchiveTooLarge(f"{url}: {declared} bytes, over the limit of {cap}")
            chunks, size = [], 0
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > cap:
                    raise ArchiveTooLarge(f"{url}: larger than the limit of {cap} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.RequestException as exc:
        raise RemoteError(f"{url}: {exc.__class__.__name__}: {exc}") from None
