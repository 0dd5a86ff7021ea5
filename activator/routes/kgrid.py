"""KGrid-style routes: list KOs, read their metadata and service, and call their functions.

Both KGrid route styles reach one handler: ``POST /{id}/{version}/{endpoint}`` (1.x; a major-only
version such as ``1`` picks the highest 1.x.y) and ``POST /endpoints/{id}/{endpoint}`` (2.0;
``?v=`` pins a version or range, else the highest active version).

A body that is a JSON array is a batch: every item is answered, in order, and a bad item gets its
own error entry (``info.errors[i]``) instead of failing the others, so a batch is 200 whenever it
is well-formed JSON.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from activator.capture import run_captured, subject_of
from activator.http import json_response, parse_json, read_body, require_json, state_of
from activator.problems import PROBLEM_TYPE, Problem, without_paths
from activator.registry import Snapshot
from activator.versions import call_address, resolve_entry, servable, snapshot_of, version_headers
from kgrid_py.errors import InputError, NotFound
from kgrid_py.ko import CallResult, KnowledgeObject
from kgrid_py.openapi import service_spec
from kgrid_py.shelf import ShelfEntry

__all__ = [
    "KORoute",
    "call_routes",
    "field_errors",
    "routes",
    "row_problem",
]


def _minimal(request: Request) -> bool:
    accept = request.headers.get("accept", "").replace(" ", "").replace('"', "")
    return "profile=minimal" in accept


# A row's (or a single call's) error lists at most this many fields, each message at most this long:
# a bad input must never be answered with many times its own size (a row of many unknown keys, each
# answered with the list of inputs, would be).
MAX_ROW_ERRORS = 5
MAX_CALL_ERRORS = 50
MAX_MESSAGE = 200


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def field_errors(exc: InputError, most: int) -> list[dict[str, str]]:
    """The first ``most`` field errors, messages shortened, and one entry counting the rest."""
    shown = [{"field": _short(e.field), "message": _short(e.message)} for e in exc.errors[:most]]
    if len(exc.errors) > most:
        shown.append({"field": "(more)", "message": f"{len(exc.errors) - most} more problem(s) not shown"})
    return shown


def row_problem(exc: InputError) -> dict[str, Any]:
    """A bad batch row as a compact RFC 9457 problem (the minimal profile's answer for that row)."""
    return {
        "type": PROBLEM_TYPE + "invalid-input",
        "title": "Invalid input",
        "status": 422,
        "errors": field_errors(exc, MAX_ROW_ERRORS),
    }


def _run_batch(ko: KnowledgeObject, endpoint: str, items: list[Any]) -> list[CallResult | InputError]:
    outcomes: list[CallResult | InputError] = []
    for item in items:
        try:
            outcomes.append(ko.call(endpoint, item))
        except InputError as exc:
            outcomes.append(exc)
    return outcomes


# A body larger than this runs in the pool whatever its function's measured cost: the cost of a
# call may grow with its input (a tensor, a file), and one large call inline would stall the loop.
INLINE_MAX_BODY = 65_536


def _small(request: Request) -> bool:
    declared = request.headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) <= INLINE_MAX_BODY


_RAW_MEDIA = frozenset({"application/octet-stream", "application/gzip", "application/x-gzip"})


def _file_input(ko: KnowledgeObject, endpoint: str) -> str | None:
    """The input a raw body feeds: the one preprocessed tensor (a file), all other inputs optional."""
    inputs = ko.function(endpoint).inputs
    files = [f.name for f in inputs if f.type == "tensor" and f.preprocessing]
    others_optional = all(not f.required for f in inputs if f.name not in files)
    return files[0] if len(files) == 1 and others_optional else None


async def _read_inputs(request: Request, ko: KnowledgeObject, endpoint: str, limit: int) -> Any:
    """JSON inputs; or a raw file body (octet-stream, gzip) for a function with one file input."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media in _RAW_MEDIA and (field := _file_input(ko, endpoint)) is not None:
        body = await read_body(request, limit)
        if not body:
            raise Problem(400, f"the body is empty; send the file for {field!r} as the body")
        return {field: body}
    require_json(request)
    return parse_json(await read_body(request, limit))


async def _call(request: Request, ko_id: str, spec: str | None, endpoint: str, *, from_query: bool) -> Response:
    state = state_of(request)
    snapshot = snapshot_of(request)
    entry = resolve_entry(snapshot, ko_id, spec, from_query=from_query)
    ko = servable(snapshot, entry, endpoint)
    if endpoint not in ko.functions:
        raise Problem(404, f"{ko.ref} has no endpoint {endpoint!r}", available=ko.functions)
    inputs = await _read_inputs(request, ko, endpoint, state.settings.max_body_bytes)
    limit = state.settings.max_batch_rows
    if isinstance(inputs, list) and len(inputs) > limit:
        raise Problem(
            413,
            f"the batch has {len(inputs)} items; this server scores at most {limit} per request "
            "(send several requests, or use kgrid score for a population)",
            max_batch_rows=limit,
        )
    request_id = request.scope.get("request_id")
    info: dict[str, Any] = {
        "id": ko.id,
        "version": ko.version,
        "endpoint": endpoint,
        "status": entry.status,
        "content_digest": ko.content_digest,
        "request_id": request_id,
    }
    minimal = _minimal(request)
    capture = state.capture
    channel = "kgrid-2" if from_query else "kgrid-1"
    subject = None
    if capture is not None:
        subject = capture.subject_key_of(subject_of(request))
        if subject is not None and isinstance(inputs, list):
            raise Problem(400, "X-Subject-Id names one patient; send a batch's patients one request each")
    started = time.perf_counter()
    status = 500  # until the call returns or is refused
    inline: bool | None = None  # where a single call ran (a batch always runs in the pool)
    try:
        if isinstance(inputs, list):
            if capture is None:
                outcomes = await state.dispatcher.run_alone(_run_batch, ko, endpoint, inputs)
            else:
                captured = await state.dispatcher.run_alone(run_captured, ko, _run_batch, ko, endpoint, inputs)
                await capture.record(captured, channel=channel, caller="anonymous")
                outcomes = captured.unwrap()
            if minimal:  # no info to carry the errors: a bad row is its own problem object, never a bare null
                result: Any = [o.result if isinstance(o, CallResult) else row_problem(o) for o in outcomes]
            else:
                result = [o.result if isinstance(o, CallResult) else None for o in outcomes]
            info["warnings"] = [o.warnings if isinstance(o, CallResult) else [] for o in outcomes]
            info["errors"] = [field_errors(o, MAX_ROW_ERRORS) if isinstance(o, InputError) else None for o in outcomes]
        else:
            try:
                # Inline on the event loop when this function's measured cost is tiny (and the body
                # small: a large input may cost what no earlier call did), else in the pool.
                key = (ko.id, ko.version, endpoint) if _small(request) else None
                inline = state.dispatcher.is_inline(key)
                if capture is None:
                    out = await state.dispatcher.call(key, ko.call, endpoint, inputs)
                else:
                    captured = await state.dispatcher.call(key, run_captured, ko, ko.call, endpoint, inputs)
                    await capture.record(captured, channel=channel, caller="anonymous", subject=subject, inputs=inputs)
                    out = captured.unwrap()
            except InputError as exc:
                status = 422
                shown = field_errors(exc, MAX_CALL_ERRORS)
                summary = "; ".join(f"{e['field']}: {e['message']}" for e in shown[:MAX_ROW_ERRORS])
                raise Problem(
                    422,
                    f"invalid input for {ko.ref} {endpoint}: {summary}",
                    errors=shown,
                    id=ko.id,
                    version=ko.version,
                ) from None
            result = out.result
            info["warnings"] = out.warnings
        status = 200
    finally:
        state.metrics.observe_call(
            ko.id,
            ko.version,
            endpoint,
            time.perf_counter() - started,
            len(inputs) if isinstance(inputs, list) else 1,
            status,
            inline,
        )
    headers = version_headers(request, snapshot, entry, call_address, endpoint)
    if minimal:
        return json_response(result, headers=headers)
    return json_response({"result": result, "info": info}, headers=headers)


async def call_v1(request: Request) -> Response:
    params = request.path_params
    return await _call(request, params["ko_id"], params["version"], params["endpoint"], from_query=False)


async def call_v2(request: Request) -> Response:
    params = request.path_params
    pinned = request.query_params.getlist("v")
    if len(pinned) > 1:  # "last wins" would run a version the caller may not have meant
        raise Problem(400, f"?v= is given {len(pinned)} times; give one version or range")
    spec = pinned[0] if pinned and pinned[0] else None
    return await _call(request, params["ko_id"], spec, params["endpoint"], from_query=True)


# -- listing -------------------------------------------------------------------------------------


def _summary(snapshot: Snapshot, entry: ShelfEntry) -> dict[str, Any]:
    row: dict[str, Any] = {"id": entry.ko_id, "version": entry.version, "status": entry.status}
    ko = snapshot.kos.get((entry.ko_id, entry.version))
    if ko is not None:
        row["title"] = ko.metadata.title
        row["endpoints"] = ko.functions
        row["content_digest"] = ko.content_digest
        row["links"] = {
            "metadata": f"/kos/{entry.ko_id}/{entry.version}",
            "service": f"/kos/{entry.ko_id}/{entry.version}/service",
            "calls": [call_address(entry, f) for f in ko.functions],
        }
    if entry.successor:
        row["successor"] = entry.successor
    return row


async def list_kos(request: Request) -> Response:
    snapshot = snapshot_of(request)
    rows = [_summary(snapshot, e) for e in snapshot.entries] + [f.as_dict() for f in snapshot.failed]
    rows.sort(key=lambda r: (r["id"], r.get("version") or ""))
    return json_response({"generation": snapshot.generation, "kos": rows})


async def get_ko(request: Request) -> Response:
    snapshot = snapshot_of(request)
    ko_id = request.path_params["ko_id"]
    if ko_id not in snapshot.ids:
        raise Problem(404, f"no KO {ko_id!r}", available=snapshot.ids)
    try:
        default = snapshot.resolve(ko_id, None).version
    except NotFound:
        default = None
    versions = [_summary(snapshot, e) for e in snapshot.versions(ko_id)]
    versions += [f.as_dict() for f in snapshot.failures(ko_id)]
    return json_response({"id": ko_id, "default_version": default, "versions": versions})


def _entry_for_read(request: Request, snapshot: Snapshot) -> ShelfEntry:
    ko_id, version = request.path_params["ko_id"], request.path_params["version"]
    for failure in snapshot.failures(ko_id):
        if failure.version == version:
            reason = without_paths(failure.reason)
            raise Problem(404, f"{ko_id} {version} failed to load and is not served: {reason}", reason=reason)
    return resolve_entry(snapshot, ko_id, version)


async def get_version(request: Request) -> Response:
    snapshot = snapshot_of(request)
    entry = _entry_for_read(request, snapshot)
    ko = snapshot.kos.get((entry.ko_id, entry.version))
    body = _summary(snapshot, entry)
    if ko is not None:
        body["metadata"] = ko.metadata.to_json()
    return json_response(body)


async def get_service(request: Request) -> Response:
    snapshot = snapshot_of(request)
    entry = _entry_for_read(request, snapshot)
    ko = servable(snapshot, entry)
    spec = service_spec(ko.metadata)
    return json_response(spec)


routes = [
    Route("/kos", list_kos, methods=["GET"]),
    Route("/kos/{ko_id}", get_ko, methods=["GET"]),
    Route("/kos/{ko_id}/{version}", get_version, methods=["GET"]),
    Route("/kos/{ko_id}/{version}/service", get_service, methods=["GET"]),
]


class KORoute(Route):
    """``/{ko_id}/...``: never matches a path whose first segment belongs to another route.

    So it can be tried first (the call routes are the hot path, and each route tried before one
    costs a regex match) without shadowing ``/kos/...``, ``/v2/...`` or routes added later: the
    reserved segments are the fixed first segments of every route beside it in ``siblings``.
    """

    def __init__(self, path: str, endpoint: Any, *, methods: list[str]) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.siblings: list[BaseRoute] = []
        self._reserved: frozenset[str] = frozenset()
        self._seen = -1

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http":
            if len(self.siblings) != self._seen:  # routes were added: recompute what they own
                self._seen = len(self.siblings)
                self._reserved = frozenset(_first_segment(r) for r in self.siblings if r is not self) - {""}
            first = scope["path"][1:].partition("/")[0]
            if first in self._reserved:
                return Match.NONE, {}
        return super().matches(scope)


def _first_segment(route: BaseRoute) -> str:
    path = getattr(route, "path", "")
    first = path[1:].partition("/")[0]
    return "" if "{" in first else first


def call_routes() -> list[BaseRoute]:
    """The two call routes, new for each app (a KORoute holds its app's route list)."""
    return [
        Route("/endpoints/{ko_id}/{endpoint}", call_v2, methods=["POST"]),
        KORoute("/{ko_id}/{version}/{endpoint}", call_v1, methods=["POST"]),
    ]
