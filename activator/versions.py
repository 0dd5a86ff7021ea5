"""Which KO version a request names, whether it may run, and the lifecycle headers it answers with.

Shared by every route family that runs a KO (KGrid routes, the Open Inference Protocol, the
catalogue): a retired version is a 410 naming its successor, a draft a 404, and a deprecated one
answers with ``Deprecation``, ``Sunset`` and a ``Link`` to its successor.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request

from activator.http import state_of
from activator.problems import Problem
from activator.registry import Snapshot
from kgrid_py.curation.lifecycle import LifecycleInfo
from kgrid_py.errors import KgridError, NotFound
from kgrid_py.ko import KnowledgeObject
from kgrid_py.shelf import InvalidReference, Reference, ShelfEntry, lifecycle_record_path

__all__ = [
    "call_address",
    "deprecation_headers",
    "resolve_entry",
    "servable",
    "snapshot_of",
    "version_headers",
]

log = logging.getLogger("activator")


def snapshot_of(request: Request) -> Snapshot:
    state = state_of(request)
    if not state.registry.ready:
        raise Problem(503, "the shelf is still loading; try again shortly", headers={"Retry-After": "1"})
    return state.registry.current


def call_address(entry: ShelfEntry, endpoint: str | None = None) -> str:
    base = f"/{entry.ko_id}/{entry.version}"
    return f"{base}/{endpoint}" if endpoint else base


def resolve_entry(snapshot: Snapshot, ko_id: str, spec: str | None, *, from_query: bool = False) -> ShelfEntry:
    try:
        return snapshot.resolve(ko_id, spec)
    except InvalidReference as exc:
        if from_query:
            raise Problem(400, f"?v= {exc}") from None
        # Only a bad version can get here: an unknown ko_id is NotFound before anything is parsed.
        raise Problem(404, f"{ko_id} has no version {spec!r}", available=snapshot.listing(ko_id)) from None
    except NotFound as exc:
        raise Problem(404, Exception.__str__(exc), available=exc.available) from None


def servable(snapshot: Snapshot, entry: ShelfEntry, endpoint: str | None = None) -> KnowledgeObject:
    """The loaded KO for an entry: 410 if retired, 404 if a draft."""
    if entry.status == "retired":
        extensions: dict[str, Any] = {}
        headers: dict[str, str] = {}
        detail = f"{entry.ko_id} {entry.version} is retired"
        if entry.successor:
            address = _successor_address(snapshot, entry.successor, endpoint)
            extensions["successor"] = entry.successor
            detail += f"; use {entry.successor} instead"
            if address:
                extensions["successor_address"] = address
                headers["Link"] = f'<{address}>; rel="successor-version"'
        raise Problem(410, detail, headers=headers, **extensions)
    if entry.status == "draft":
        raise Problem(
            404,
            f"{entry.ko_id} {entry.version} is a draft and is not served",
            available=snapshot.listing(entry.ko_id),
        )
    return snapshot.ko(entry)


def _successor_address(snapshot: Snapshot, successor: str, endpoint: str | None) -> str | None:
    try:
        reference = Reference.parse(successor)
        entry = snapshot.resolve(reference.ko_id, reference.spec)
    except (InvalidReference, NotFound):
        return None
    return call_address(entry, endpoint)


def version_headers(
    request: Request,
    snapshot: Snapshot,
    entry: ShelfEntry,
    address: Callable[[ShelfEntry, str], str],
    endpoint: str,
) -> dict[str, str]:
    """For a deprecated version: ``Deprecation``, ``Sunset`` when one is recorded (set_status), and a
    ``Link`` to the successor's ``address(entry, endpoint)`` (the named successor, else the highest
    active version). Empty for any other version. Every route family that runs a KO sends these."""
    if entry.status != "deprecated":
        return {}
    root = state_of(request).registry.shelf.root
    headers = dict(deprecation_headers(root, snapshot.generation, entry.ko_id, entry.version))
    try:
        reference = Reference.parse(entry.successor or entry.ko_id)
        successor = snapshot.resolve(reference.ko_id, reference.spec)
    except (InvalidReference, NotFound):
        return headers
    if successor != entry:
        headers["Link"] = f'<{address(successor, endpoint)}>; rel="successor-version"'
    return headers


@functools.lru_cache(maxsize=1024)
def deprecation_headers(shelf: Path, generation: int, ko_id: str, version: str) -> dict[str, str]:
    """``Deprecation`` and, when a sunset is recorded, ``Sunset`` for a deprecated version.

    Read from ``<shelf>/.kgrid/lifecycle/<id>/<version>.json`` (written by ``set_status``) once
    per registry generation: every status change reloads, so the headers follow it. The caller
    adds the ``Link`` to the successor (as a call address, which the activator can resolve).
    """
    record: dict[str, Any] = {}
    path = lifecycle_record_path(shelf, ko_id, version)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            record = loaded
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("%s@%s: unreadable lifecycle record %s: %s", ko_id, version, path, exc)
    info = LifecycleInfo("deprecated", None, record.get("deprecated_at"), record.get("sunset"))
    try:
        headers = info.http_headers()
    except KgridError as exc:  # a hand-edited date that does not parse: still say deprecated
        log.warning("%s@%s: %s", ko_id, version, exc)
        headers = {"Deprecation": "true"}
    headers.pop("Link", None)
    return headers
