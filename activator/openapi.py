"""The combined OpenAPI 3.1 document: the activator's own routes plus every served KO function.

Each KO function appears in both KGrid styles, with the input and output schemas its metadata
declares (``kgrid_py.openapi``), so a generic client or a fuzzer can call every KO from here.
"""

from __future__ import annotations

from typing import Any

from activator.registry import Snapshot
from kgrid_py import __version__
from kgrid_py.openapi import input_schema, output_schema

__all__ = ["combined_spec"]

PROBLEM = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                "required": ["field", "message"],
            },
        },
        "available": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["type", "title", "status", "detail"],
}
_PROBLEM_REF = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}


def _problems(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "Malformed JSON or a bad query",
        404: "Unknown KO, version or endpoint, with what exists",
        405: "Method not allowed",
        410: "Retired, with its successor",
        413: "Body over the size limit",
        415: "Not application/json",
        422: "Invalid input, one entry per field",
        503: "The shelf is still loading",
    }
    return {str(c): {"description": reasons[c], "content": _PROBLEM_REF} for c in codes}


def _get(
    summary: str, *codes: int, params: tuple[str, ...] = (), content: dict[str, Any] | None = None
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": content or _JSON_OBJECT}, **_problems(*codes)},
    }
    if params:
        operation["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z0-9.-]+$"}}
            for p in params
        ]
    return {"get": operation}


def _static_paths() -> dict[str, Any]:
    return {
        "/": _get("Links to everything here"),
        "/health": _get("Liveness"),
        "/ready": _get("Readiness: the shelf has been loaded", 503),
        "/metrics": _get("Prometheus metrics", content={"text/plain": {"schema": {"type": "string"}}}),
        "/kos": _get("Every KO version and its status (active, deprecated, retired, draft, failed)", 503),
        "/kos/{ko_id}": _get("One KO's versions", 404, 503, params=("ko_id",)),
        "/kos/{ko_id}/{version}": _get("One version's metadata", 404, 503, params=("ko_id", "version")),
        "/kos/{ko_id}/{version}/service": _get("One version's own OpenAPI", 404, 410, 503, params=("ko_id", "version")),
        "/v2": _get("Open Inference Protocol: server metadata"),
        "/v2/health/live": {"get": {"summary": "OIP liveness", "responses": {"200": {"description": "Live"}}}},
        "/v2/health/ready": {
            "get": {
                "summary": "OIP readiness",
                "responses": {"200": {"description": "Ready"}, "503": {"description": "Loading"}},
            }
        },
    }


def _call_operation(
    ko_id: str, versions: list[str], function: Any, *, query: bool, max_batch_rows: int
) -> dict[str, Any]:
    inputs = input_schema(function)
    outputs = output_schema(function)
    body = {"oneOf": [inputs, {"type": "array", "items": inputs, "maxItems": max_batch_rows}]}
    result = {"oneOf": [outputs, {"type": "array", "items": {"anyOf": [outputs, {"type": "null"}]}}]}
    operation: dict[str, Any] = {
        "operationId": f"{'endpoints' if query else 'call'}-{ko_id}-{versions[-1]}-{function.name}".replace(".", "_"),
        "summary": function.title,
        "description": function.description + " A JSON array of inputs is a batch, answered in order.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {
                "description": "The result; info names the KO version that computed it",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"result": result, "info": {"type": "object"}},
                            "required": ["result", "info"],
                        }
                    }
                },
            },
            **_problems(400, 404, 410, 413, 415, 422, 503),
        },
    }
    if query:
        operation["parameters"] = [
            {
                "name": "v",
                "in": "query",
                "required": False,
                "description": "A version or semver range; without it, the highest active version",
                "schema": {"type": "string", "enum": versions},
            }
        ]
    return {"post": operation}


def combined_spec(snapshot: Snapshot, *, max_batch_rows: int) -> dict[str, Any]:
    """The OpenAPI 3.1 of every served version; a batch holds at most ``max_batch_rows`` (``--max-batch-rows``)."""
    paths = _static_paths()
    versions: dict[str, list[str]] = {}
    for entry, ko in snapshot.served():
        versions.setdefault(entry.ko_id, []).append(entry.version)
        for function in ko.metadata.functions:
            path = f"/{entry.ko_id}/{entry.version}/{function.name}"
            paths[path] = _call_operation(
                entry.ko_id, [entry.version], function, query=False, max_batch_rows=max_batch_rows
            )
    for ko_id, served in versions.items():
        default = snapshot.resolve(ko_id, None)  # the version /endpoints answers with, without ?v=
        for function in snapshot.ko(default).metadata.functions:
            paths[f"/endpoints/{ko_id}/{function.name}"] = _call_operation(
                ko_id, served, function, query=True, max_batch_rows=max_batch_rows
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kgrid-py activator",
            "version": __version__,
            "description": "Every served knowledge-object version on this shelf, as HTTP services.",
        },
        "paths": paths,
        "components": {"schemas": {"Problem": PROBLEM}},
    }
