"""CDS Hooks 2.0 services over the KOs: discovery, ``patient-view``/``order-select`` calls, feedback.

One service per KO function that declares ``cds`` and FHIR bindings (one per hook it lists), under
a pinned id (``<ko>-<version>-<function>[-<hook>]``) and a version-less one (``<ko>-<function>
[-<hook>]``) that always runs the highest active version. A call takes the prefetch (or fetches
what is missing from ``fhirServer`` with the ``fhirAuthorization`` token), follows ``next`` links
of paged search results (bounded), maps FHIR onto the inputs (:mod:`kgrid_py.fhir`: the newest
value by effective time), runs the KO and answers with a card that names the KO version, its
title and citations, and warns whenever it cannot be sure it saw the newest value.

Errors are RFC 9457 problem details like every other activator route; a 401 carries
``WWW-Authenticate: Bearer``; every route answers CORS preflights for browser-based CDS Clients.

Mount the routes into any Starlette or FastAPI app::

    hooks = CdsHooks(kos=lambda request: ..., settings=CdsSettings(issuers_file=Path("cds-issuers.json"),
                                                                   public_url="https://cds.example.org"))
    app = Starlette(routes=[*hooks.routes, ...])        # or: app.router.routes.extend(hooks.routes)

``kos(request)`` returns the KnowledgeObjects being served now, so this module never depends on
how the application holds them.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import anyio
import httpx
import semantic_version
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router, request_response
from starlette.types import ASGIApp

from activator.capture import refused_event, run_captured
from activator.cds_auth import AuthError, JwtVerifier
from activator.cds_store import CdsStore
from activator.http import parse_json, read_body, require_json
from activator.problems import Problem, problem_response
from activator.refusals import RefusalAudit
from kgrid_py.errors import InputError, KgridError
from kgrid_py.fhir import FhirData, FhirDataError, FhirMapping, bound_inputs, map_inputs, next_link, prefetch_templates
from kgrid_py.ko import CallResult, KnowledgeObject
from kgrid_py.learning.ids import id_to_uuid, new_id
from kgrid_py.metadata import FunctionSpec

__all__ = ["CdsHooks", "CdsService", "CdsSettings", "cds_router", "display_unit"]

MAX_CDS_BODY_BYTES = 32 * 1024 * 1024  # a prefetch of thousands of resources fits
MAX_FEEDBACK_BODY_BYTES = 64 * 1024
MAX_FEEDBACK_PER_CALL = 100
MAX_FEEDBACK_ENTRY_BYTES = 4096
log = logging.getLogger("activator.cds")

KosAccessor = Callable[[Request], Iterable[KnowledgeObject]]
SUMMARY_LIMIT = 139
HOOKS = ("patient-view", "order-select")
# Citations in the order a card names them: the equation actually run (a refit) before the one it refits.
_ROLE_ORDER = {"refit": 0, "development": 1, "validation": 2, "threshold": 3, "other": 4}
# A JSON escape of a UTF-16 surrogate; only a body holding one can decode to a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_CORS_EXPOSE = ("Origin", "Accept", "Content-Location", "Location", "X-Requested-With", "WWW-Authenticate")

# UCUM codes as clinicians write them; anything else falls back to _plain_unit.
_DISPLAY_UNITS = {
    "mL/min/{1.73_m2}": "mL/min/1.73 m²",
    "umol/L": "µmol/L",
    "mmol/L": "mmol/L",
    "mg/dL": "mg/dL",
    "mg/L": "mg/L",
    "g/dL": "g/dL",
    "g/L": "g/L",
    "meq/L": "mEq/L",
    "mg/g": "mg/g",
    "mg/mmol": "mg/mmol",
    "kg/m2": "kg/m²",
    "{pack}/d": "packs/day",
    "a": "years",
    "mo": "months",
    "wk": "weeks",
    "d": "days",
    "1": "%",
    "%": "%",
}


def display_unit(ucum: str | None) -> str:
    """A UCUM code as a clinician reads it (``mL/min/{1.73_m2}`` -> ``mL/min/1.73 m²``)."""
    if not ucum:
        return ""
    return _DISPLAY_UNITS.get(ucum) or _plain_unit(ucum)


def _plain_unit(ucum: str) -> str:
    text = re.sub(r"\{([^{}]*)\}", r"\1", ucum).replace("_", " ")
    text = re.sub(r"(?<![A-Za-z])u(?=(mol|g|L)\b)", "µ", text)
    return re.sub(r"(?<=[A-Za-z])2\b", "²", text)


@dataclass(frozen=True)
class CdsSettings:
    """How the CDS Hooks routes behave.

    ``no_auth`` turns JWT verification off (``kgrid serve --cds-no-auth``; local development only,
    a warning is logged; any ``fhirServer`` may then be fetched from). Otherwise calls need a JWT
    from an issuer in ``issuers_file`` (or the given ``verifier``); with neither, every call is
    refused with 401. ``public_url`` is the URL the EHR calls (``kgrid serve --public-url``): a
    JWT's ``aud`` must equal it plus the service path, and nothing in the request changes that.
    ``store_path`` is the SQLite file of seen ``jti``s and feedback (in memory when None).
    ``audit`` records every refused token in the shelf's audit log (``kgrid serve`` sets it).
    FHIR fetches: ``fhir_timeout_s`` bounds one call's fetching in all, ``fhir_max_bytes`` each
    answer, ``fhir_max_pages`` the pages read per search.
    """

    no_auth: bool = False
    issuers_file: Path | None = None
    verifier: JwtVerifier | None = None
    public_url: str | None = None
    store_path: Path | None = None
    audit: RefusalAudit | None = None
    fhir_timeout_s: float = 10.0
    fhir_max_bytes: int = 8 * 1024 * 1024
    fhir_max_pages: int = 10


@dataclass(frozen=True)
class CdsService:
    """One KO function offered for one hook (``pinned``: False for the version-less id)."""

    id: str
    hook: str
    ko: KnowledgeObject
    function: FunctionSpec
    pinned: bool = True

    def discovery(self) -> dict[str, Any]:
        cds = self.function.cds
        assert cds is not None
        title = self.ko.metadata.title
        which = (
            f"Pinned to knowledge object {self.ko.ref}"
            if self.pinned
            else f"Always the highest active version of {self.ko.id} (now {self.ko.ref})"
        )
        return {
            "id": self.id,
            "hook": self.hook,
            "title": f"{cds.title} ({title}, {self.ko.ref})",
            "description": f"{cds.description} Equation: {self.function.title}. {which}: {title}.",
            "prefetch": prefetch_templates(self.function),
            "usageRequirements": (
                f"Computed by knowledge object {self.ko.ref} ({title}), function {self.function.name}."
            ),
        }


def services_of(kos: Iterable[KnowledgeObject]) -> dict[str, CdsService]:
    """Every CDS service the given KOs offer, by id: pinned ones and version-less ones.

    A version-less id resolves to the highest *active* version offering that function and hook;
    an id that two different KO functions would both produce is left out rather than guessed.
    """
    offered: list[CdsService] = []
    latest: dict[tuple[str, str, str], CdsService] = {}
    for ko in kos:
        for spec in ko.metadata.functions:
            if spec.cds is None or not bound_inputs(spec):
                continue
            for n, hook in enumerate(spec.cds.hooks):
                suffix = "" if n == 0 else f"-{hook}"
                offered.append(CdsService(f"{ko.id}-{ko.version}-{spec.name}{suffix}", hook, ko, spec))
                if ko.status != "active":
                    continue
                key = (ko.id, spec.name, suffix)
                best = latest.get(key)
                if best is None or _semver(ko.version) > _semver(best.ko.version):
                    latest[key] = CdsService(f"{ko.id}-{spec.name}{suffix}", hook, ko, spec, pinned=False)
    offered += latest.values()
    found: dict[str, CdsService] = {}
    clashes: set[str] = set()
    for service in offered:
        if service.id in found:
            clashes.add(service.id)
        found[service.id] = service
    for service_id in clashes:
        del found[service_id]
    return found


def _semver(version: str) -> semantic_version.Version:
    return semantic_version.Version(version)


class _FetchFailed(Exception):
    """A FHIR fetch failed; the reason is logged, never returned (no remote status or URL)."""


class CdsHooks:
    """The CDS Hooks routes and their state (JWT verifier, shared replay and feedback store)."""

    def __init__(self, kos: KosAccessor, settings: CdsSettings | None = None) -> None:
        self.kos = kos
        self.settings = settings = settings or CdsSettings()
        self.store = CdsStore(settings.store_path)
        self.verifier = settings.verifier
        if settings.no_auth:
            log.warning("CDS Hooks JWT verification is OFF (--cds-no-auth): use for local development only")
        elif self.verifier is None and settings.issuers_file is not None:
            self.verifier = JwtVerifier.from_file(settings.issuers_file, store=self.store)
        elif self.verifier is None:
            log.warning("CDS Hooks: no trusted issuers configured; every CDS call will be refused (401)")
        if not settings.no_auth and not settings.public_url:
            log.warning("CDS Hooks: no public URL configured (--public-url); every CDS call will be refused (401)")
        self.routes = [
            Route("/cds-services", _cors(self.discovery), methods=["GET", "OPTIONS"]),
            Route("/cds-services/{service_id}", _cors(self.call), methods=["POST", "OPTIONS"]),
            Route("/cds-services/{service_id}/feedback", _cors(self.record_feedback), methods=["POST", "OPTIONS"]),
        ]

    @property
    def feedback(self) -> list[dict[str, Any]]:
        """The most recent stored feedback records (the store keeps them all)."""
        return self.store.feedback()

    # -- routes ----------------------------------------------------------------------------------

    async def discovery(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": "GET, HEAD, OPTIONS"})
        services = services_of(self.kos(request))
        return JSONResponse({"services": [s.discovery() for s in services.values()]})

    async def call(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": "POST, OPTIONS"})
        try:
            service = self._service(request)
            claims = await self._authorize(request, service)
            body = await _json_body(request, MAX_CDS_BODY_BYTES)
            context, prefetch, fhir_server, token = _validate_call(body, service)
            data, notes = await self._gather(service, context, prefetch, fhir_server, token, self._fhir_servers(claims))
            try:
                mapping = map_inputs(service.function, data, datetime.now(UTC))
            except FhirDataError as exc:  # a selected resource, validated only now, is malformed
                raise Problem(400, f"unusable FHIR data: {exc}") from None
            capture = _capture_of(request)
            if capture is not None:
                return await self._captured_call(capture, claims, context, service, mapping, notes)
            if not mapping.complete:
                return JSONResponse({"cards": [_missing_card(service, mapping, notes)]})
            try:
                result = await anyio.to_thread.run_sync(service.ko.call, service.function.name, mapping.inputs)
            except InputError as exc:
                return JSONResponse({"cards": [_invalid_card(service, mapping, exc, notes)]})
            return JSONResponse({"cards": [_result_card(service, mapping, result, notes)]})
        except Problem as problem:
            return problem_response(request, problem)
        except (sqlite3.Error, OSError):
            return problem_response(request, _store_unavailable(self.store))

    async def _captured_call(
        self,
        capture: Any,
        claims: dict[str, Any] | None,
        context: dict[str, Any],
        service: CdsService,
        mapping: FhirMapping,
        notes: list[str],
    ) -> Response:
        """Compute, commit the call's record (its id is the card's uuid), then answer (capture on)."""
        patient = capture.patient_of(context["patientId"])
        caller = str(claims["iss"]) if claims else "no-auth"
        ko, name = service.ko, service.function.name
        if not mapping.complete:
            missing = ", ".join(g.input for g in mapping.gaps)
            captured = refused_event(ko, name, mapping.inputs, f"missing inputs: {missing}", patient)
        else:
            captured = await anyio.to_thread.run_sync(run_captured, ko, ko.call, name, mapping.inputs)
        capture_id = new_id()
        await capture.record(
            captured, channel="cds-hooks", caller=caller, subject=patient, inputs=mapping.inputs, capture_id=capture_id
        )
        if not mapping.complete:
            card = _missing_card(service, mapping, notes)
        elif isinstance(captured.value, InputError):
            card = _invalid_card(service, mapping, captured.value, notes)
        else:
            card = _result_card(service, mapping, captured.unwrap(), notes)
        card["uuid"] = id_to_uuid(capture_id)
        return JSONResponse({"cards": [card]})

    async def record_feedback(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": "POST, OPTIONS"})
        try:
            service = self._service(request)
            claims = await self._authorize(request, service)
            body = await _json_body(request, MAX_FEEDBACK_BODY_BYTES)
            records = _feedback_records(body, service)
            capture = _capture_of(request)
            if capture is not None:
                caller = str(claims["iss"]) if claims else "no-auth"
                ko_id, function = service.ko.id, service.function.name
                await capture.record_feedback(records, caller=caller, ko_id=ko_id, function=function)
            else:
                await anyio.to_thread.run_sync(self.store.add_feedback, records)
            return JSONResponse({})
        except Problem as problem:
            return problem_response(request, problem)
        except (sqlite3.Error, OSError):
            return problem_response(request, _store_unavailable(self.store))

    # -- steps -----------------------------------------------------------------------------------

    def _service(self, request: Request) -> CdsService:
        service_id = request.path_params["service_id"]
        service = services_of(self.kos(request)).get(service_id)
        if service is None:
            raise Problem(404, f"no CDS service {service_id!r}; GET /cds-services lists them")
        return service

    async def _authorize(self, request: Request, service: CdsService) -> dict[str, Any] | None:
        """The verified JWT claims (None with ``no_auth``); a 401 problem otherwise.

        The audience is the configured public URL plus the service path, never the request's
        Host or X-Forwarded-* headers: a token minted for another host must not pass here.
        """
        if self.settings.no_auth:
            return None
        if self.verifier is None:
            raise _unauthorized("no trusted issuers are configured for CDS Hooks", "invalid_token")
        if not self.settings.public_url:
            raise _unauthorized("no public URL is configured for CDS Hooks (--public-url)", "invalid_token")
        audience = f"{self.settings.public_url.rstrip('/')}/cds-services/{quote(service.id, safe='')}"
        # A feedback call may name the feedback URL or the service's URL as its audience.
        audiences = [audience + "/feedback", audience] if request.url.path.endswith("/feedback") else [audience]
        header = request.headers.get("authorization")
        try:
            return await self.verifier.verify_header(header, audiences)
        except AuthError as exc:
            log.info("CDS call refused: %s", exc)  # the reason only, never the token
            if self.settings.audit is not None:
                self.settings.audit.record(request, 401, str(exc), service=service.id)
            raise _unauthorized(str(exc), "invalid_token" if header else None) from None

    def _fhir_servers(self, claims: dict[str, Any] | None) -> tuple[str, ...] | None:
        """The FHIR base URLs the caller may have fetched from (None: any, in no-auth mode)."""
        if claims is None:
            return None
        assert self.verifier is not None
        issuer = self.verifier.issuers.get(claims["iss"])
        return issuer.fhir_servers if issuer is not None else ()

    async def _gather(
        self,
        service: CdsService,
        context: dict[str, Any],
        prefetch: dict[str, Any],
        server: str | None,
        token: str | None,
        allowed: tuple[str, ...] | None,
    ) -> tuple[FhirData, list[str]]:
        """The patient's data from prefetch and fhirServer, and notes on anything possibly left unseen."""
        settings = self.settings
        templates = prefetch_templates(service.function)
        missing = {k: t for k, t in templates.items() if prefetch.get(k) is None}
        pages: dict[str, list[Any]] = {k: [prefetch[k]] for k in templates if k not in missing}
        usable = server if server is not None and (allowed is None or _allowed(server, allowed)) else None
        if missing and usable is None:
            names = ", ".join(sorted(missing))
            why = "no fhirServer to fetch it from" if server is None else "fhirServer is not allowed for this issuer"
            raise Problem(412, f"prefetch {names} missing and {why}")
        notes: list[str] = []
        paged = [k for k, p in pages.items() if next_link(p[0]) is not None]
        if usable is None:
            for key in paged:
                notes.append(
                    f"{key}: the prefetched results are paged and there is no "
                    f"{'allowed ' if server else ''}fhirServer to read the rest from, so a more recent "
                    "value may have been missed"
                )
        elif missing or paged:
            fetcher = _Fetcher(usable, token, settings.fhir_max_bytes)
            unfinished: list[str] = []
            async with fetcher:
                with anyio.move_on_after(settings.fhir_timeout_s) as scope:
                    for key, template in missing.items():
                        pages[key] = [await fetcher.get(f"{usable.rstrip('/')}/{_render(template, context)}", key)]
                    unfinished = list(pages)
                    for key in list(unfinished):
                        await self._follow(fetcher, key, pages[key], notes)
                        unfinished.remove(key)
                if scope.cancelled_caught:
                    if any(k not in pages for k in missing):
                        raise Problem(
                            412, f"the FHIR server did not answer within {settings.fhir_timeout_s:g} s"
                        ) from None
                    notes += [
                        f"{key}: reading further pages of results took longer than {settings.fhir_timeout_s:g} s, "
                        "so a more recent value may have been missed"
                        for key in unfinished
                        if next_link(pages[key][-1]) is not None
                    ]
        data = FhirData(lazy=True)
        try:
            for key, template in templates.items():
                data.searched(template.split("?", 1)[0].split("/", 1)[0])
                for page in pages[key]:
                    data.add(page)
        except FhirDataError as exc:
            raise Problem(400, f"unusable FHIR data: {exc}") from None
        if (
            any(f.fhir.kind in ("age", "sex", "us-core-race") for f in bound_inputs(service.function))  # type: ignore[union-attr]
            and data.patient is None
        ):
            raise Problem(412, "the Patient resource could not be obtained")
        if data.patient is not None and data.patient.id and data.patient.id != context["patientId"]:
            raise Problem(400, "the prefetched Patient is not context.patientId")
        return data, notes

    async def _follow(self, fetcher: _Fetcher, key: str, pages: list[Any], notes: list[str]) -> None:
        """Read ``next`` pages of one search (bounded); a note when the last page was not reached."""
        while (url := next_link(pages[-1])) is not None:
            if len(pages) >= self.settings.fhir_max_pages:
                notes.append(
                    f"{key}: the results run to more than {self.settings.fhir_max_pages} pages and only those "
                    "were read, so a more recent value may have been missed"
                )
                return
            if not _allowed(url, (fetcher.server,)):
                log.info("CDS: a next link for %s leaves the fhirServer; not followed", key)
                notes.append(f"{key}: the next page of results is not on the fhirServer, so it was not read")
                return
            try:
                pages.append(await fetcher.get(url, key, page=True))
            except _FetchFailed:
                notes.append(
                    f"{key}: a further page of results could not be read, so a more recent value may have been missed"
                )
                return


def _capture_of(request: Request) -> Any:
    """The activator's capture (activator.capture.Capture) when it runs with --capture; else None."""
    return getattr(getattr(request.state, "activator", None), "capture", None)


def _store_unavailable(store: CdsStore) -> Problem:
    log.exception("CDS Hooks: the replay and feedback store %s cannot be used", store.path or "(memory)")
    return Problem(503, "the CDS Hooks store is unavailable; the error is logged", headers={"Retry-After": "5"})


def _cors(endpoint: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    """CORS as CDS Hooks asks for browser-based clients: any origin, Authorization and Content-Type."""
    return CORSMiddleware(
        request_response(endpoint),
        allow_origins=["*"],
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=list(_CORS_EXPOSE),
        max_age=600,
    )


def _unauthorized(message: str, error: str | None) -> Problem:
    """A 401 with the RFC 6750 challenge (no error code when no token was sent at all)."""
    challenge = 'Bearer realm="cds-hooks"'
    if error is not None:
        description = re.sub(r"[^\x20\x21\x23-\x5b\x5d-\x7e]", "'", message)  # a quoted-string: no " or \\
        challenge += f', error="{error}", error_description="{description}"'
    return Problem(401, message, headers={"WWW-Authenticate": challenge})


def _allowed(url: str, bases: Iterable[str]) -> bool:
    """True when ``url`` is on one of ``bases``: same scheme, host and port, under its path."""
    try:
        target = urlsplit(url)
        target_port = target.port
    except ValueError:
        return False
    if target.scheme not in ("http", "https") or target.username or target.password or not target.hostname:
        return False
    for base in bases:
        try:
            allowed = urlsplit(base)
            allowed_port = allowed.port
        except ValueError:
            continue
        if (
            allowed.scheme == target.scheme
            and allowed.hostname == target.hostname
            and (allowed_port or _PORTS[allowed.scheme]) == (target_port or _PORTS[target.scheme])
        ):
            prefix = allowed.path.rstrip("/")
            if target.path == prefix or target.path.startswith(prefix + "/") or (not prefix and not target.path):
                return True
    return False


_PORTS = {"http": 80, "https": 443}


class _Fetcher:
    """GETs from one FHIR server: no redirects, each answer at most ``max_bytes``, JSON objects only."""

    def __init__(self, server: str, token: str | None, max_bytes: int) -> None:
        self.server = server
        self.max_bytes = max_bytes
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.AsyncClient(headers=headers, follow_redirects=False, timeout=10.0)

    async def __aenter__(self) -> _Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def get(self, url: str, key: str, *, page: bool = False) -> dict[str, Any]:
        """The JSON object at ``url``; a 412 problem (or :class:`_FetchFailed` for a further page)."""
        what = f"{'a further page of ' if page else ''}{key}"
        try:
            async with self.client.stream("GET", url) as answer:
                if answer.status_code != 200:
                    log.info("CDS: the FHIR server answered %s for %s", answer.status_code, what)
                    raise _FetchFailed
                declared = answer.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    log.info("CDS: the FHIR server's answer for %s is %s bytes; over the limit", what, declared)
                    raise _FetchFailed
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        log.info("CDS: the FHIR server's answer for %s is over %d bytes", what, self.max_bytes)
                        raise _FetchFailed
            data = parse_json(bytes(body))
            if not isinstance(data, dict):
                raise _FetchFailed
            return data
        except (httpx.HTTPError, Problem, _FetchFailed) as exc:
            if not isinstance(exc, _FetchFailed):
                log.info("CDS: fetching %s from the FHIR server failed (%s)", what, type(exc).__name__)
            if page:
                raise _FetchFailed from None
            raise Problem(412, f"could not fetch {key} from the FHIR server") from None


def cds_router(kos: KosAccessor, settings: CdsSettings | None = None) -> Router:
    """A Starlette ``Router`` with the CDS Hooks routes (``router.routes`` to splice them into an app)."""
    hooks = CdsHooks(kos, settings)
    router = Router(routes=hooks.routes)
    router.cds = hooks  # type: ignore[attr-defined]
    return router


# -- request validation ------------------------------------------------------------------------


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request as a JSON object, parsed as strictly as every other activator route."""
    require_json(request)
    raw = await read_body(request, limit)
    body = parse_json(raw)
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise Problem(400, "the body holds a lone UTF-16 surrogate (such as \\ud800), which is not text") from None
    if not isinstance(body, dict):
        raise Problem(400, "the request body must be a JSON object")
    return body


def _validate_call(
    body: dict[str, Any], service: CdsService
) -> tuple[dict[str, Any], dict[str, Any], str | None, str | None]:
    if body.get("hook") != service.hook:
        raise Problem(400, f"'hook' must be {service.hook!r} for service {service.id!r}, got {body.get('hook')!r}")
    if not isinstance(body.get("hookInstance"), str) or not body["hookInstance"]:
        raise Problem(400, "'hookInstance' (a string) is required")
    context = body.get("context")
    if not isinstance(context, dict) or not isinstance(context.get("patientId"), str) or not context["patientId"]:
        raise Problem(400, "'context.patientId' (a string) is required")
    if not isinstance(context.get("userId"), str):
        raise Problem(400, "'context.userId' (a string) is required")
    if service.hook == "order-select" and not isinstance(context.get("draftOrders"), dict):
        raise Problem(400, "order-select needs 'context.draftOrders' (a Bundle)")
    prefetch = body.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        raise Problem(400, "'prefetch' must be an object")
    server = body.get("fhirServer")
    if server is not None and (not isinstance(server, str) or not server.startswith(("http://", "https://"))):
        raise Problem(400, "'fhirServer' must be an http(s) URL")
    token = None
    auth = body.get("fhirAuthorization")
    if auth is not None:
        if server is None:
            raise Problem(400, "'fhirAuthorization' without 'fhirServer'")
        if not isinstance(auth, dict) or not isinstance(auth.get("access_token"), str):
            raise Problem(400, "'fhirAuthorization.access_token' (a string) is required")
        if str(auth.get("token_type", "")).lower() != "bearer":
            raise Problem(400, "'fhirAuthorization.token_type' must be 'Bearer'")
        token = auth["access_token"]
        if not token.isascii() or not token.isprintable():
            raise Problem(400, "'fhirAuthorization.access_token' must be printable ASCII")
    return context, prefetch, server, token


def _feedback_records(body: dict[str, Any], service: CdsService) -> list[dict[str, Any]]:
    """Validated feedback entries as records to store, each bounded in size."""
    items = body.get("feedback")
    if not isinstance(items, list) or not items:
        raise Problem(400, "'feedback' must be a non-empty array")
    if len(items) > MAX_FEEDBACK_PER_CALL:
        raise Problem(413, f"at most {MAX_FEEDBACK_PER_CALL} feedback entries per call")
    received = datetime.now(UTC).isoformat()
    records = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("card"), str) or not item["card"]:
            raise Problem(400, f"feedback[{n}] needs a 'card' (the card's uuid)")
        if item.get("outcome") not in ("accepted", "overridden"):
            raise Problem(400, f"feedback[{n}].outcome must be 'accepted' or 'overridden'")
        if not isinstance(item.get("outcomeTimestamp"), str):
            raise Problem(400, f"feedback[{n}] needs an 'outcomeTimestamp'")
        if len(json.dumps(item, ensure_ascii=False).encode("utf-8")) > MAX_FEEDBACK_ENTRY_BYTES:
            raise Problem(413, f"feedback[{n}] is over {MAX_FEEDBACK_ENTRY_BYTES} bytes")
        records.append(
            {
                **item,
                "service": service.id,
                "ko": service.ko.id,
                "version": service.ko.version,
                "function": service.function.name,
                "received": received,
            }
        )
    return records


def _render(template: str, context: dict[str, Any]) -> str:
    out = template
    for key, value in context.items():
        if isinstance(value, str):
            out = out.replace("{{context." + key + "}}", quote(value, safe=""))
    return out


# -- cards -------------------------------------------------------------------------------------


def _format(value: Any, unit: str | None) -> str:
    """A value with its unit as clinicians write it; a probability (unit ``1``) as a percentage."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if unit == "1":
            return f"{value * 100:.1f} %"
        return f"{value:.3g}" + (f" {display_unit(unit)}" if unit else "")
    return f"{value}" + (f" {display_unit(unit)}" if unit and unit != "1" else "")


def _summary(text: str) -> str:
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def _cited(service: CdsService) -> list[Any]:
    """The KO version's citations, the equation actually run (refit, development) first."""
    return sorted(service.ko.metadata.citations, key=lambda c: _ROLE_ORDER.get(c.role, len(_ROLE_ORDER)))


def _source(service: CdsService) -> dict[str, Any]:
    ko = service.ko
    source: dict[str, Any] = {
        "label": f"{ko.metadata.title} ({ko.ref})",
        "topic": {
            "system": "https://kgrid-py.org/knowledge-objects",
            "code": f"{ko.ref}/{service.function.name}",
            "display": service.function.title,
        },
    }
    first = next(iter(_cited(service)), None)
    if first is not None:
        source["url"] = f"https://doi.org/{first.doi}"
    return source


def _inputs_table(mapping: FhirMapping, function: FunctionSpec) -> str:
    """Each input used, where it came from; inputs left at the KO's default are said to be assumed."""
    assumed = [f for f in function.inputs if not f.required and f.name not in mapping.sources]
    if not mapping.sources and not assumed:
        return ""
    rows = ["| Input | Value | Unit | Observed | Source |", "|---|---|---|---|---|"]
    for name, src in mapping.sources.items():
        when = (src.effective or "")[:10]
        rows.append(
            f"| {name} | {_format(src.value, None)} | {display_unit(src.unit)} | {when} | {src.resource or ''} |"
        )
    for f in assumed:
        value = _format(f.default, None)
        rows.append(
            f"| {f.name} | {value} | {display_unit(f.unit)} | | "
            "**assumed**: the KO's default, not read from the record |"
        )
    return "\n".join(rows)


def _citations(service: CdsService) -> str:
    ko = service.ko
    lines = [f"- {c.text} https://doi.org/{c.doi}" for c in _cited(service) if c.role in ("refit", "development")]
    head = (
        f"Computed by **{ko.metadata.title}** (knowledge object {ko.id}, version {ko.version}), "
        f"function {service.function.name}: {service.function.title}."
    )
    return head + ("\n\n" + "\n".join(lines) if lines else "")


def _warnings(messages: list[str]) -> str:
    return "**Warnings**\n\n" + "\n".join(f"- {w}" for w in messages) if messages else ""


def _card(service: CdsService, summary: str, indicator: str, detail: str) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(summary),
        "indicator": indicator,
        "detail": detail,
        "source": _source(service),
    }


_RANK = {"info": 0, "warning": 1, "critical": 2}


def _at_least(level: str, floor: str) -> str:
    return level if _RANK[level] >= _RANK[floor] else floor


def _indicator(service: CdsService, result: dict[str, Any]) -> tuple[str, list[str]]:
    cds = service.function.cds
    assert cds is not None
    level, reasons = "info", []
    for rule in cds.indicators:
        value = result.get(rule.output)
        if not isinstance(value, int | float):
            continue
        for name, threshold in (("critical", rule.critical), ("warning", rule.warning)):
            if threshold is not None and float(value) >= threshold:
                level = _at_least(level, name)
                unit = _unit(service, rule.output)
                reasons.append(
                    f"{rule.output} {_format(float(value), '1' if unit == '1' else None)} "
                    f"is at or above the {name} threshold {_format(threshold, unit)}"
                    + (f" ({rule.reason})" if rule.reason else "")
                )
                break
    return level, reasons


def _unit(service: CdsService, output: str) -> str | None:
    return next((o.unit for o in service.function.outputs if o.name == output), None)


def _result_card(service: CdsService, mapping: FhirMapping, call: CallResult, notes: list[str]) -> dict[str, Any]:
    cds = service.function.cds
    assert cds is not None
    shown = ", ".join(f"{o.name} {_format(call.result[o.name], o.unit)}" for o in service.function.outputs)
    level, reasons = _indicator(service, call.result)
    if notes:  # the value may not be the newest: never present it as certain
        level = _at_least(level, "warning")
    parts = [_inputs_table(mapping, service.function)]
    if reasons:
        parts.append("\n".join(f"- {r}" for r in reasons))
    parts.append(_warnings([*notes, *call.warnings]))
    parts.append(_citations(service))
    return _card(service, f"{cds.title}: {shown}", level, "\n\n".join(p for p in parts if p))


def _missing_card(service: CdsService, mapping: FhirMapping, notes: list[str]) -> dict[str, Any]:
    cds = service.function.cds
    assert cds is not None
    names = ", ".join(g.input for g in mapping.gaps)
    lines = "\n".join(f"- **{g.input}** ({g.reason}): {g.message}" for g in mapping.gaps)
    parts = [f"Cannot compute {cds.title}; these inputs could not be taken from the record:\n\n{lines}"]
    if mapping.sources:
        parts.append("Found:\n\n" + _inputs_table(mapping, service.function))
    parts.append(_warnings(notes))
    parts.append(_citations(service))
    level = "warning" if notes else "info"
    return _card(service, f"{cds.title}: cannot compute, missing {names}", level, "\n\n".join(p for p in parts if p))


def _invalid_card(service: CdsService, mapping: FhirMapping, exc: KgridError, notes: list[str]) -> dict[str, Any]:
    cds = service.function.cds
    assert cds is not None
    problems = exc.errors if isinstance(exc, InputError) else []
    lines = "\n".join(f"- **{e.field}**: {e.message}" for e in problems) or f"- {exc}"
    parts = [
        f"The record's values cannot be used:\n\n{lines}",
        _inputs_table(mapping, service.function),
        _warnings(notes),
        _citations(service),
    ]
    fields = ", ".join(e.field for e in problems)
    return _card(
        service,
        f"{cds.title}: cannot compute, unusable {fields or 'inputs'}",
        "warning",
        "\n\n".join(p for p in parts if p),
    )
