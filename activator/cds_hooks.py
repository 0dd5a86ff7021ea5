"""CDS Hooks 2.0 services over the KOs: discovery, ``patient-view``/``order-select`` calls, feedback.

One service per KO function that declares ``cds`` and FHIR bindings (one per hook it lists). A call
takes the prefetch (or fetches what is missing from ``fhirServer`` with the ``fhirAuthorization``
token), maps FHIR onto the inputs (:mod:`kgrid_py.fhir`), runs the KO and answers with a card.

Mount the routes into any Starlette or FastAPI app::

    hooks = CdsHooks(kos=lambda request: ..., settings=CdsSettings(issuers_file=Path("cds-issuers.json")))
    app = Starlette(routes=[*hooks.routes, ...])        # or: app.router.routes.extend(hooks.routes)

``kos(request)`` returns the KnowledgeObjects being served now, so this module never depends on
how the application holds them.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from activator.cds_auth import AuthError, JwtVerifier
from activator.http import parse_json, read_body
from activator.problems import Problem
from kgrid_py.errors import InputError, KgridError
from kgrid_py.fhir import FhirData, FhirDataError, FhirMapping, bound_inputs, map_inputs, prefetch_templates
from kgrid_py.ko import CallResult, KnowledgeObject
from kgrid_py.metadata import FunctionSpec

__all__ = ["CdsHooks", "CdsService", "CdsSettings", "cds_router"]

MAX_CDS_BODY_BYTES = 32 * 1024 * 1024  # a prefetch of thousands of resources fits
MAX_FEEDBACK_PER_CALL = 100
MAX_FEEDBACK_KEPT = 10_000
log = logging.getLogger("activator.cds")

KosAccessor = Callable[[Request], Iterable[KnowledgeObject]]
SUMMARY_LIMIT = 139
HOOKS = ("patient-view", "order-select")


@dataclass(frozen=True)
class CdsSettings:
    """How the CDS Hooks routes behave.

    ``no_auth`` turns JWT verification off (``kgrid serve --cds-no-auth``; local development only,
    a warning is logged). Otherwise calls need a JWT from an issuer in ``issuers_file`` (or the
    given ``verifier``); with neither, every call is refused with 401. ``base_url`` is the public
    URL the EHR calls (behind a proxy); the JWT's ``aud`` must equal it plus the service path.
    """

    no_auth: bool = False
    issuers_file: Path | None = None
    verifier: JwtVerifier | None = None
    base_url: str | None = None
    feedback_file: Path | None = None
    fhir_timeout_s: float = 10.0


@dataclass(frozen=True)
class CdsService:
    """One KO function offered for one hook."""

    id: str
    hook: str
    ko: KnowledgeObject
    function: FunctionSpec

    def discovery(self) -> dict[str, Any]:
        cds = self.function.cds
        assert cds is not None
        return {
            "id": self.id,
            "hook": self.hook,
            "title": cds.title,
            "description": cds.description,
            "prefetch": prefetch_templates(self.function),
            "usageRequirements": f"Computed by knowledge object {self.ko.ref}, function {self.function.name}.",
        }


def services_of(kos: Iterable[KnowledgeObject]) -> dict[str, CdsService]:
    """Every CDS service the given KOs offer, by id (``<ko>-<version>-<function>[-<hook>]``)."""
    found: dict[str, CdsService] = {}
    for ko in kos:
        for spec in ko.metadata.functions:
            if spec.cds is None or not bound_inputs(spec):
                continue
            base = f"{ko.id}-{ko.version}-{spec.name}"
            for n, hook in enumerate(spec.cds.hooks):
                service_id = base if n == 0 else f"{base}-{hook}"
                found[service_id] = CdsService(service_id, hook, ko, spec)
    return found


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class CdsHooks:
    """The CDS Hooks routes and their state (JWT verifier, replay cache, stored feedback)."""

    def __init__(self, kos: KosAccessor, settings: CdsSettings | None = None) -> None:
        self.kos = kos
        self.settings = settings = settings or CdsSettings()
        self.feedback: deque[dict[str, Any]] = deque(maxlen=MAX_FEEDBACK_KEPT)  # the file keeps them all
        self._feedback_lock = threading.Lock()
        self.verifier = settings.verifier
        if settings.no_auth:
            log.warning("CDS Hooks JWT verification is OFF (--cds-no-auth): use for local development only")
        elif self.verifier is None and settings.issuers_file is not None:
            self.verifier = JwtVerifier.from_file(settings.issuers_file)
        elif self.verifier is None:
            log.warning("CDS Hooks: no trusted issuers configured; every CDS call will be refused (401)")
        self.routes = [
            Route("/cds-services", self.discovery, methods=["GET"]),
            Route("/cds-services/{service_id}", self.call, methods=["POST"]),
            Route("/cds-services/{service_id}/feedback", self.record_feedback, methods=["POST"]),
        ]

    # -- routes ----------------------------------------------------------------------------------

    async def discovery(self, request: Request) -> Response:
        services = services_of(self.kos(request))
        return JSONResponse({"services": [s.discovery() for s in services.values()]})

    async def call(self, request: Request) -> Response:
        try:
            service = self._service(request)
            self._authorize(request)
            body = await _json_body(request)
            context, prefetch, fhir_server, token = _validate_call(body, service)
            data = await self._gather(service, context, prefetch, fhir_server, token)
            try:
                mapping = map_inputs(service.function, data, datetime.now(UTC))
            except FhirDataError as exc:  # a selected resource, validated only now, is malformed
                raise _Reject(400, f"unusable FHIR data: {exc}") from None
            if not mapping.complete:
                return JSONResponse({"cards": [_missing_card(service, mapping)]})
            try:
                result = await anyio.to_thread.run_sync(service.ko.call, service.function.name, mapping.inputs)
            except InputError as exc:
                return JSONResponse({"cards": [_invalid_card(service, mapping, exc)]})
            return JSONResponse({"cards": [_result_card(service, mapping, result)]})
        except _Reject as reject:
            return JSONResponse({"error": reject.message}, status_code=reject.status)

    async def record_feedback(self, request: Request) -> Response:
        try:
            service = self._service(request)
            self._authorize(request)
            body = await _json_body(request)
            items = body.get("feedback")
            if not isinstance(items, list) or not items:
                raise _Reject(400, "'feedback' must be a non-empty array")
            if len(items) > MAX_FEEDBACK_PER_CALL:
                raise _Reject(413, f"at most {MAX_FEEDBACK_PER_CALL} feedback entries per call")
            records = []
            for n, item in enumerate(items):
                if not isinstance(item, dict) or not isinstance(item.get("card"), str):
                    raise _Reject(400, f"feedback[{n}] needs a 'card' (the card's uuid)")
                if item.get("outcome") not in ("accepted", "overridden"):
                    raise _Reject(400, f"feedback[{n}].outcome must be 'accepted' or 'overridden'")
                if not isinstance(item.get("outcomeTimestamp"), str):
                    raise _Reject(400, f"feedback[{n}] needs an 'outcomeTimestamp'")
                records.append(
                    {
                        "service": service.id,
                        "ko": service.ko.id,
                        "version": service.ko.version,
                        "function": service.function.name,
                        "received": datetime.now(UTC).isoformat(),
                        **item,
                    }
                )
            self._store(records)
            return JSONResponse({})
        except _Reject as reject:
            return JSONResponse({"error": reject.message}, status_code=reject.status)

    # -- steps -----------------------------------------------------------------------------------

    def _service(self, request: Request) -> CdsService:
        service_id = request.path_params["service_id"]
        service = services_of(self.kos(request)).get(service_id)
        if service is None:
            raise _Reject(404, f"no CDS service {service_id!r}")
        return service

    def _authorize(self, request: Request) -> None:
        if self.settings.no_auth:
            return
        if self.verifier is None:
            raise _Reject(401, "no trusted issuers are configured for CDS Hooks")
        if self.settings.base_url:
            audience = self.settings.base_url.rstrip("/") + request.url.path
        else:
            audience = str(request.url.replace(query=""))
        # A feedback call may name the feedback URL or the service's URL as its audience.
        audiences = [audience, audience.removesuffix("/feedback")] if audience.endswith("/feedback") else [audience]
        try:
            self.verifier.verify_header(request.headers.get("authorization"), audiences)
        except AuthError as exc:
            log.info("CDS call refused: %s", exc)  # the reason only, never the token
            raise _Reject(401, str(exc)) from None

    async def _gather(
        self,
        service: CdsService,
        context: dict[str, Any],
        prefetch: dict[str, Any],
        server: str | None,
        token: str | None,
    ) -> FhirData:
        data = FhirData(lazy=True)
        templates = prefetch_templates(service.function)
        missing = {k: t for k, t in templates.items() if prefetch.get(k) is None}
        fetched: dict[str, Any] = {}
        if missing:
            if not server:
                raise _Reject(412, f"prefetch {', '.join(sorted(missing))} missing and no fhirServer to fetch it from")
            headers = {"Accept": "application/fhir+json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            async with httpx.AsyncClient(timeout=self.settings.fhir_timeout_s, headers=headers) as client:
                for key, template in missing.items():
                    url = f"{server.rstrip('/')}/{_render(template, context)}"
                    try:
                        answer = await client.get(url)
                    except httpx.HTTPError as exc:
                        raise _Reject(
                            412, f"could not fetch {key} from the FHIR server ({type(exc).__name__})"
                        ) from None
                    if answer.status_code != 200:
                        raise _Reject(412, f"the FHIR server answered {answer.status_code} for {key}")
                    try:
                        fetched[key] = answer.json()
                    except ValueError:
                        raise _Reject(412, f"the FHIR server's answer for {key} is not JSON") from None
        try:
            for key, template in templates.items():
                resource = prefetch.get(key) if key not in fetched else fetched[key]
                data.searched(template.split("?", 1)[0].split("/", 1)[0])
                data.add(resource)
        except FhirDataError as exc:
            raise _Reject(400, f"unusable FHIR data: {exc}") from None
        if (
            any(f.fhir.kind in ("age", "sex", "us-core-race") for f in bound_inputs(service.function))
            and data.patient is None
        ):  # type: ignore[union-attr]
            raise _Reject(412, "the Patient resource could not be obtained")
        if data.patient is not None and data.patient.id and data.patient.id != context["patientId"]:
            raise _Reject(400, "the prefetched Patient is not context.patientId")
        return data

    def _store(self, records: list[dict[str, Any]]) -> None:
        with self._feedback_lock:
            self.feedback.extend(records)
            if self.settings.feedback_file is not None:
                with self.settings.feedback_file.open("a", encoding="utf-8") as out:
                    for record in records:
                        out.write(json.dumps(record, sort_keys=True) + "\n")


def cds_router(kos: KosAccessor, settings: CdsSettings | None = None) -> Router:
    """A Starlette ``Router`` with the CDS Hooks routes (``router.routes`` to splice them into an app)."""
    hooks = CdsHooks(kos, settings)
    router = Router(routes=hooks.routes)
    router.cds = hooks  # type: ignore[attr-defined]
    return router


# -- request validation ------------------------------------------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    """The request as a JSON object, parsed as strictly as every other activator route."""
    try:
        body = parse_json(await read_body(request, MAX_CDS_BODY_BYTES))
    except Problem as problem:
        raise _Reject(problem.status, problem.detail) from None
    if not isinstance(body, dict):
        raise _Reject(400, "the request body must be a JSON object")
    return body


def _validate_call(
    body: dict[str, Any], service: CdsService
) -> tuple[dict[str, Any], dict[str, Any], str | None, str | None]:
    if body.get("hook") != service.hook:
        raise _Reject(400, f"'hook' must be {service.hook!r} for service {service.id!r}, got {body.get('hook')!r}")
    if not isinstance(body.get("hookInstance"), str) or not body["hookInstance"]:
        raise _Reject(400, "'hookInstance' (a string) is required")
    context = body.get("context")
    if not isinstance(context, dict) or not isinstance(context.get("patientId"), str) or not context["patientId"]:
        raise _Reject(400, "'context.patientId' (a string) is required")
    if not isinstance(context.get("userId"), str):
        raise _Reject(400, "'context.userId' (a string) is required")
    if service.hook == "order-select" and not isinstance(context.get("draftOrders"), dict):
        raise _Reject(400, "order-select needs 'context.draftOrders' (a Bundle)")
    prefetch = body.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        raise _Reject(400, "'prefetch' must be an object")
    server = body.get("fhirServer")
    if server is not None and (not isinstance(server, str) or not server.startswith(("http://", "https://"))):
        raise _Reject(400, "'fhirServer' must be an http(s) URL")
    token = None
    auth = body.get("fhirAuthorization")
    if auth is not None:
        if server is None:
            raise _Reject(400, "'fhirAuthorization' without 'fhirServer'")
        if not isinstance(auth, dict) or not isinstance(auth.get("access_token"), str):
            raise _Reject(400, "'fhirAuthorization.access_token' (a string) is required")
        if str(auth.get("token_type", "")).lower() != "bearer":
            raise _Reject(400, "'fhirAuthorization.token_type' must be 'Bearer'")
        token = auth["access_token"]
    return context, prefetch, server, token


def _render(template: str, context: dict[str, Any]) -> str:
    out = template
    for key, value in context.items():
        if isinstance(value, str):
            out = out.replace("{{context." + key + "}}", quote(value, safe=""))
    return out


# -- cards -------------------------------------------------------------------------------------


def _format(value: Any, unit: str | None) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if unit == "1":
            return f"{value * 100:.1f} %"
        return f"{value:.3g}" + (f" {unit}" if unit else "")
    return f"{value}" + (f" {unit}" if unit and unit != "1" else "")


def _summary(text: str) -> str:
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def _source(service: CdsService) -> dict[str, Any]:
    meta = service.ko.metadata
    source: dict[str, Any] = {
        "label": service.ko.ref,
        "topic": {
            "system": "https://kgrid-py.org/knowledge-objects",
            "code": f"{service.ko.ref}/{service.function.name}",
            "display": service.function.title,
        },
    }
    development = next((c for c in meta.citations if c.role == "development"), None) or next(iter(meta.citations), None)
    if development is not None:
        source["url"] = f"https://doi.org/{development.doi}"
    return source


def _inputs_table(mapping: FhirMapping, function: FunctionSpec) -> str:
    """Each input used, where it came from; inputs left at the KO's default are said to be assumed."""
    assumed = [f for f in function.inputs if not f.required and f.name not in mapping.sources]
    if not mapping.sources and not assumed:
        return ""
    rows = ["| Input | Value | Unit | Observed | Source |", "|---|---|---|---|---|"]
    for name, src in mapping.sources.items():
        when = (src.effective or "")[:10]
        rows.append(f"| {name} | {_format(src.value, None)} | {src.unit or ''} | {when} | {src.resource or ''} |")
    for f in assumed:
        value = _format(f.default, None)
        rows.append(
            f"| {f.name} | {value} | {f.unit or ''} | | **assumed**: the KO's default, not read from the record |"
        )
    return "\n".join(rows)


def _citations(service: CdsService) -> str:
    cites = [f"- {c.text} https://doi.org/{c.doi}" for c in service.ko.metadata.citations if c.role == "development"]
    return f"Computed by **{service.ko.ref}** ({service.function.name}).\n" + "\n".join(cites)


def _card(service: CdsService, summary: str, indicator: str, detail: str) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(summary),
        "indicator": indicator,
        "detail": detail,
        "source": _source(service),
    }


def _indicator(service: CdsService, result: dict[str, Any]) -> tuple[str, list[str]]:
    cds = service.function.cds
    assert cds is not None
    level, reasons = "info", []
    rank = {"info": 0, "warning": 1, "critical": 2}
    for rule in cds.indicators:
        value = result.get(rule.output)
        if not isinstance(value, int | float):
            continue
        for name, threshold in (("critical", rule.critical), ("warning", rule.warning)):
            if threshold is not None and float(value) >= threshold:
                if rank[name] > rank[level]:
                    level = name
                reasons.append(
                    f"{rule.output} {_format(float(value), '1' if _unit(service, rule.output) == '1' else None)} "
                    f"is at or above the {name} threshold {_format(threshold, _unit(service, rule.output))}"
                    + (f" ({rule.reason})" if rule.reason else "")
                )
                break
    return level, reasons


def _unit(service: CdsService, output: str) -> str | None:
    return next((o.unit for o in service.function.outputs if o.name == output), None)


def _result_card(service: CdsService, mapping: FhirMapping, call: CallResult) -> dict[str, Any]:
    cds = service.function.cds
    assert cds is not None
    shown = ", ".join(f"{o.name} {_format(call.result[o.name], o.unit)}" for o in service.function.outputs)
    level, reasons = _indicator(service, call.result)
    parts = [_inputs_table(mapping, service.function)]
    if reasons:
        parts.append("\n".join(f"- {r}" for r in reasons))
    if call.warnings:
        parts.append("**Warnings**\n\n" + "\n".join(f"- {w}" for w in call.warnings))
    parts.append(_citations(service))
    return _card(service, f"{cds.title}: {shown}", level, "\n\n".join(p for p in parts if p))


def _missing_card(service: CdsService, mapping: FhirMapping) -> dict[str, Any]:
    cds = service.function.cds
    assert cds is not None
    names = ", ".join(g.input for g in mapping.gaps)
    lines = "\n".join(f"- **{g.input}** ({g.reason}): {g.message}" for g in mapping.gaps)
    parts = [f"Cannot compute {cds.title}; these inputs could not be taken from the record:\n\n{lines}"]
    if mapping.sources:
        parts.append("Found:\n\n" + _inputs_table(mapping, service.function))
    parts.append(_citations(service))
    return _card(service, f"{cds.title}: cannot compute, missing {names}", "info", "\n\n".join(parts))


def _invalid_card(service: CdsService, mapping: FhirMapping, exc: KgridError) -> dict[str, Any]:
    cds = service.function.cds
    assert cds is not None
    problems = exc.errors if isinstance(exc, InputError) else []
    lines = "\n".join(f"- **{e.field}**: {e.message}" for e in problems) or f"- {exc}"
    table = _inputs_table(mapping, service.function)
    detail = f"The record's values cannot be used:\n\n{lines}\n\n{table}\n\n{_citations(service)}"
    fields = ", ".join(e.field for e in problems)
    return _card(service, f"{cds.title}: cannot compute, unusable {fields or 'inputs'}", "warning", detail)
