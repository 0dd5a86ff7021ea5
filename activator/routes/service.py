"""The service's own routes: links, liveness, readiness, Prometheus metrics and the combined OpenAPI."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from activator.docs import docs_page
from activator.http import json_response, parse_json, read_body, state_of
from activator.metrics import CONTENT_TYPE_LATEST
from activator.openapi import combined_spec
from activator.problems import Problem
from activator.registry import describe
from activator.settings import Settings
from activator.versions import snapshot_of

__all__ = ["routes"]


async def root(request: Request) -> Response:
    return json_response(
        {
            "name": "kgrid-py activator",
            "links": {
                "health": "/health",
                "ready": "/ready",
                "metrics": "/metrics",
                "kos": "/kos",
                "openapi": "/openapi.json",
                "docs": "/docs",
                "call (KGrid 1.x)": "/{id}/{version}/{endpoint}",
                "call (KGrid 2.0)": "/endpoints/{id}/{endpoint}?v={version-or-range}",
                "open inference protocol": "/v2",
            },
        }
    )


async def health(request: Request) -> Response:
    return json_response({"status": "live"})


async def ready(request: Request) -> Response:
    registry = state_of(request).registry
    if not registry.ready:
        raise Problem(503, "the shelf is still loading", headers={"Retry-After": "1"})
    return json_response({"status": "ready", **describe(registry.current)})


async def metrics(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    limit = state_of(request).settings.max_batch_rows
    return json_response(combined_spec(snapshot_of(request), max_batch_rows=limit))


async def bench_echo(request: Request) -> Response:
    """Parse JSON and return it on the same stack as a KO call: the benchmark's baseline."""
    body = parse_json(await read_body(request, state_of(request).settings.max_body_bytes))
    return json_response({"result": body, "info": {"request_id": request.scope.get("request_id")}})


def routes(settings: Settings) -> list[Route]:
    """The service routes; ``/_bench/echo`` only when the benchmark asks for it."""
    return [
        Route("/", root, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        *([Route("/_bench/echo", bench_echo, methods=["POST"])] if settings.bench_echo else []),
    ]
