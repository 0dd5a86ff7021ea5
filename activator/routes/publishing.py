"""Publishing and lifecycle over HTTP: ``POST /kos`` and ``POST /kos/{id}/{version}/status``.

``POST /kos`` takes a KO archive (``kgrid pack``, optionally ``kgrid sign``) as the raw body,
``Content-Type: application/zip`` or ``application/octet-stream``, and a bearer token with the
``publish`` role. The checks, in order, each answered as ``application/problem+json``:

====  ==========================================================================================
401   no bearer token, or one nobody issued (``WWW-Authenticate: Bearer``)
403   a valid token without the ``publish`` role
415   any other Content-Type
413   a body over ``Settings.max_archive_bytes`` (refused from Content-Length before reading it,
      else as soon as the stream passes the limit)
...   then :func:`kgrid_py.curation.publish.publish_archive` into the served shelf; its refusals map
      through :func:`kgrid_py.curation.errors.http_status`: 413 size or zip bomb, 422 unsafe
      archive / bad metadata / breaking change without a new major / failing vectors, 403
      signature missing or untrusted, 409 same version with other content
201   a new version: published, the registry reloaded, ``Location`` names it
200   the identical archive again: nothing changed
====  ==========================================================================================

The token is checked before the body is read, so nobody without one can make the server
buffer an archive. ``POST /kos/{id}/{version}/status`` takes JSON ``{"status": "deprecated" |
"retired" | "active", "successor": "id@range", "sunset": "YYYY-MM-DD"}`` and needs the
``admin`` role (POST rather than PUT: it is a transition with rules, checked by
:func:`kgrid_py.curation.lifecycle.set_status`; repeating it is harmless, a no-op). Both routes reload the
registry when they change the shelf: the swap is atomic, so requests in flight finish on the
snapshot they started with. Every publication, refusal and status change is appended to the
shelf's audit log by the library, under the token's principal name; the token itself is never
logged, echoed or stored.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import os
from datetime import date, datetime
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from activator.http import State, json_response, parse_json, read_body, require_json, state_of
from activator.problems import Problem, without_paths
from activator.refusals import RefusalAudit
from activator.registry import describe
from activator.reloading import reload_everywhere
from activator.settings import Settings
from kgrid_py.curation.archive import ArchiveLimits
from kgrid_py.curation.audit import append_audit, audit_path
from kgrid_py.curation.errors import (
    ArchiveDigestMismatch,
    Forbidden,
    IncompatibleChange,
    Unauthorized,
    http_status,
)
from kgrid_py.curation.lifecycle import SETTABLE, LifecycleInfo, lifecycle_info, set_status
from kgrid_py.curation.publish import PublishPolicy, publish_archive
from kgrid_py.curation.tokens import Principal, TokenStore
from kgrid_py.errors import KgridError
from kgrid_py.shelf import InvalidReference, Reference

__all__ = ["ARCHIVE_TYPES", "Publishing", "publish_policy"]

log = logging.getLogger("activator")

ARCHIVE_TYPES = ("application/zip", "application/octet-stream")
_STATUS_KEYS = frozenset({"status", "successor", "sunset"})
_MAX_STATUS_BODY = 16_384


def publish_policy(require_signature: bool, trust_dir: Path | None, max_archive_bytes: int) -> PublishPolicy:
    """The policy archives are checked against, for ``POST /kos`` and a manifest URL alike."""
    limits = dataclasses.replace(ArchiveLimits(), max_archive_bytes=max_archive_bytes)
    return PublishPolicy(require_signature=require_signature, trust_dir=trust_dir, limits=limits)


class Publishing:
    """The publishing and lifecycle routes of one app, with its token store and publish policy."""

    def __init__(self, settings: Settings) -> None:
        if settings.require_signature and settings.trust_dir is None:
            raise ValueError("require_signature needs a trust dir (--trust DIR) holding the curators' public keys")
        self.settings = settings
        if settings.tokens_file is not None:
            self.tokens = TokenStore.from_file(settings.tokens_file)
            self.configured = True
        else:
            self.tokens = TokenStore.from_env()
            self.configured = bool(os.environ.get("KGRID_TOKENS_FILE") or os.environ.get("KGRID_TOKENS"))
        self.policy = publish_policy(settings.require_signature, settings.trust_dir, settings.max_archive_bytes)
        self.refusals = RefusalAudit(settings.shelf)

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/kos", self.publish, methods=["POST"]),
            Route("/admin/reload", self.admin_reload, methods=["POST"]),
            Route("/kos/{ko_id}/{version}/status", self.change_status, methods=["POST"]),
            Route("/kos/{ko_id}/{version}/status", self.show_status, methods=["GET"]),
        ]

    # -- authorization -----------------------------------------------------------------------------

    def authorize(self, request: Request, role: str) -> Principal:
        """The principal behind the request's bearer token, or a 401/403 problem (never naming the token).

        Every refusal is also appended to the shelf's audit log (see :meth:`refuse`)."""
        try:
            return self.tokens.authorize(request.headers.get("authorization"), role)
        except Unauthorized as exc:
            raise self.refuse(request, 401, f"{exc}; send Authorization: Bearer <token>", role) from None
        except Forbidden as exc:
            raise self.refuse(request, 403, str(exc), role) from None

    def authorize_reload(self, request: Request, admin_token: str | None) -> str:
        """``/admin/reload``: the legacy ``--admin-token``, or any token with the ``admin`` role; who it was."""
        if not admin_token and not self.configured:
            detail = "reloading over HTTP is disabled: start the server with --admin-token or --tokens"
            raise self.refuse(request, 403, detail, "admin")
        if admin_token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), admin_token.encode()):
                return "admin-token"
            if not self.configured:
                raise self.refuse(request, 401, "send Authorization: Bearer <admin token>", "admin")
        return self.authorize(request, "admin").name

    def refuse(self, request: Request, status: int, detail: str, role: str) -> Problem:
        """A 401/403 problem, recorded in the audit log first (rate-limited: :class:`RefusalAudit`)."""
        self.refusals.record(request, status, detail, role=role)
        return Problem(status, detail, headers=_CHALLENGE if status == 401 else None)

    async def audit(self, state: State, **record: Any) -> None:
        """Append one record to the served shelf's audit log (off the event loop: it fsyncs)."""
        log_file = audit_path(state.registry.shelf.root)
        await anyio.to_thread.run_sync(functools.partial(append_audit, log_file, **record))

    # -- POST /kos -----------------------------------------------------------------------------------

    async def publish(self, request: Request) -> Response:
        state = state_of(request)
        principal = self.authorize(request, "publish")
        content_type = request.headers.get("content-type")
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media not in ARCHIVE_TYPES:
            shown = repr(content_type) if content_type else "none"
            detail = f"send the archive as application/zip (the request's Content-Type was {shown})"
            raise Problem(415, detail, accept=list(ARCHIVE_TYPES))
        data = await read_body(request, self.settings.max_archive_bytes)
        if not data:
            raise Problem(400, "the body is empty; send the archive `kgrid pack` wrote")
        publish = functools.partial(publish_archive, data, state.registry.shelf.root, self.policy, actor=principal.name)
        try:
            outcome = await anyio.to_thread.run_sync(publish)
        except KgridError as exc:
            raise _refusal(exc, "publication refused") from None
        log.info("%s: %s by %s", outcome.ref, "published" if outcome.changed else "unchanged", principal.name)
        body = outcome.as_dict()
        address = f"/kos/{outcome.ko_id}/{outcome.version}"
        body["links"] = {"metadata": address, "status": f"{address}/status"}
        if outcome.changed:
            snapshot = await reload_everywhere(state)
            body["generation"] = snapshot.generation
            body["served"] = (outcome.ko_id, outcome.version) in snapshot.kos
            for failure in snapshot.failures(outcome.ko_id):
                if failure.version == outcome.version:  # published but not loadable here: say so
                    body["load_error"] = failure.reason
        headers = {"Location": address} if outcome.changed else None
        return json_response(body, status=outcome.http_status, headers=headers)

    # -- /kos/{id}/{version}/status ------------------------------------------------------------------

    async def change_status(self, request: Request) -> Response:
        state = state_of(request)
        principal = self.authorize(request, "admin")
        ref = _exact_ref(request)
        require_json(request)
        body = parse_json(await read_body(request, _MAX_STATUS_BODY))
        if not isinstance(body, dict):
            raise Problem(400, 'send a JSON object: {"status": "deprecated", "successor": ..., "sunset": ...}')
        unknown = sorted(set(body) - _STATUS_KEYS)
        if unknown:
            raise Problem(422, f"unknown field(s) {unknown}; allowed: {sorted(_STATUS_KEYS)}")
        status = body.get("status")
        if status not in SETTABLE:
            raise Problem(422, f"'status' must be one of {list(SETTABLE)}, not {status!r}")
        successor, sunset = body.get("successor"), body.get("sunset")
        for name, value in (("successor", successor), ("sunset", sunset)):
            if value is not None and not isinstance(value, str):
                raise Problem(422, f"{name!r} must be a string")
        if sunset is not None and not _is_iso_time(sunset):
            raise Problem(422, f"'sunset' {sunset!r} is not an ISO date (YYYY-MM-DD) or date-time")
        change_it = functools.partial(
            set_status,
            state.registry.shelf.root,
            ref,
            status,
            principal.name,
            successor=successor,
            sunset=sunset,
        )
        try:
            change = await anyio.to_thread.run_sync(change_it)
        except KgridError as exc:
            raise _refusal(exc, "status change refused") from None
        log.info("%s: %s -> %s by %s", change.ref, change.previous, change.status, principal.name)
        generation = (await reload_everywhere(state)).generation if change.changed else None
        info = await anyio.to_thread.run_sync(_info, state, ref)
        answer = {
            "ref": change.ref,
            "previous": change.previous,
            "changed": change.changed,
            **_info_dict(info),
        }
        if generation is not None:
            answer["generation"] = generation
        return json_response(answer)

    async def show_status(self, request: Request) -> Response:
        ref = _exact_ref(request)
        try:
            info = await anyio.to_thread.run_sync(_info, state_of(request), ref)
        except KgridError as exc:
            raise _refusal(exc, "no such version") from None
        return json_response({"ref": ref, **_info_dict(info)})

    async def admin_reload(self, request: Request) -> Response:
        state = state_of(request)
        # --admin-token, or a token with the admin role (--tokens); the other workers reload too.
        actor = self.authorize_reload(request, state.settings.admin_token)
        snapshot = await reload_everywhere(state)
        await self.audit(state, action="reload", outcome="reloaded", actor=actor, generation=snapshot.generation)
        return json_response(describe(snapshot))


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _exact_ref(request: Request) -> str:
    ko_id, version = request.path_params["ko_id"], request.path_params["version"]
    ref = f"{ko_id}@{version}"
    try:
        exact = Reference.parse(ref).is_exact
    except InvalidReference:
        raise Problem(404, f"no KO version {ref!r}") from None
    if not exact:
        raise Problem(400, f"a status belongs to an exact version (X.Y.Z), not {version!r}")
    return ref


def _info(state: State, ref: str) -> LifecycleInfo:
    ko_id, _, version = ref.partition("@")
    return lifecycle_info(state.registry.shelf.root, ko_id, version)


def _info_dict(info: LifecycleInfo) -> dict[str, Any]:
    return {
        "status": info.status,
        "successor": info.successor,
        "deprecated_at": info.deprecated_at,
        "sunset": info.sunset,
    }


def _refusal(exc: KgridError, what: str) -> Problem:
    """A library refusal as a problem: the status from http_status, the reason as the detail."""
    status = http_status(exc)
    if status >= 500:  # a KgridError the table does not know is still about the content sent
        status = 422
    extensions: dict[str, Any] = {"error": type(exc).__name__}
    if isinstance(exc, IncompatibleChange):
        extensions["changes"] = [str(c) for c in exc.changes]
    if isinstance(exc, ArchiveDigestMismatch):
        extensions["path"] = exc.path
    available = getattr(exc, "available", None)
    if available:
        extensions["available"] = available
    return Problem(status, without_paths(f"{what}: {Exception.__str__(exc)}"), **extensions)


def _is_iso_time(text: str) -> bool:
    try:
        if len(text) == 10:
            date.fromisoformat(text)
        else:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True
