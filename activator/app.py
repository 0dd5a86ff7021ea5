"""``create_app(settings)``: the activator's routes, middleware and error table, in one place.

The lifespan builds everything a request needs (the registry of loaded KOs, metrics, the
dispatcher that runs inference in a bounded thread pool) and hands it to requests as state;
nothing lives in module globals.
It loads the shelf in the background, so ``/health`` answers at once and ``/ready`` once loaded,
and, with ``watch``, polls the shelf and reloads when a KO folder changes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from activator import oip, routes_kgrid
from activator.dispatch import Dispatcher
from activator.docs import docs_page
from activator.http import State, json_response, parse_json, read_body, state_of
from activator.logs import RateLimited, SafeFormatter
from activator.metrics import CONTENT_TYPE_LATEST, Metrics
from activator.middleware import RequestContext
from activator.openapi import combined_spec
from activator.problems import Problem, exception_handlers
from activator.publishing import Publishing
from activator.registry import Registry, Snapshot
from activator.reloading import catch_up, reload, reload_everywhere
from activator.settings import Settings
from activator.workers import Generations
from kgrid_py.runtime import RuntimeSettings

__all__ = ["app_from_env", "configure_logging", "create_app"]

log = logging.getLogger("activator")


# -- service routes --------------------------------------------------------------------------------


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
    return json_response({"status": "ready", **_loaded(registry.current)})


async def metrics(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return json_response(combined_spec(routes_kgrid.snapshot_of(request)))


async def admin_reload(request: Request) -> Response:
    state = state_of(request)
    # --admin-token, or a token with the admin role (--tokens); the other workers reload too.
    actor = request.app.state.publishing.authorize_reload(request, state.settings.admin_token)
    snapshot = await reload_everywhere(state)
    await request.app.state.publishing.audit(
        state, action="reload", outcome="reloaded", actor=actor, generation=snapshot.generation
    )
    return json_response(_loaded(snapshot))


def _loaded(snapshot: Snapshot) -> dict[str, Any]:
    """What /ready and /admin/reload say about a snapshot: its generation, what is served, what failed."""
    return {
        "generation": snapshot.generation,
        "served": [f"{e.ko_id}@{e.version}" for e, _ in snapshot.served()],
        "failed": [f.as_dict() for f in snapshot.failed],
    }


async def bench_echo(request: Request) -> Response:
    """Parse JSON and return it on the same stack as a KO call: the benchmark's baseline."""
    body = parse_json(await read_body(request, state_of(request).settings.max_body_bytes))
    return json_response({"result": body, "info": {"request_id": request.scope.get("request_id")}})


# -- loading and watching ----------------------------------------------------------------------------


async def _load_then_watch(state: State) -> None:
    settings = state.settings
    seen = await anyio.to_thread.run_sync(state.registry.signature)
    try:
        await catch_up(state, force=True)
    except Exception:
        log.exception("could not load the shelf %s", settings.shelf)
    if not settings.watch and state.generations is None:
        return
    # Another worker's reload is followed within ~50 ms even without requests (a request catches
    # up at once by itself); the shelf's own files are compared every watch_interval.
    tick = min(settings.watch_interval, 0.05) if state.generations is not None else settings.watch_interval
    next_scan = anyio.current_time() + settings.watch_interval
    while True:
        await anyio.sleep(tick)
        try:
            await catch_up(state)
            if not settings.watch or anyio.current_time() < next_scan:
                continue
            next_scan = anyio.current_time() + settings.watch_interval
            now = await anyio.to_thread.run_sync(state.registry.signature)
            if now == seen:
                continue
            # Something changed: wait until the folder stops changing, so a half-copied KO is not loaded.
            await anyio.sleep(min(settings.watch_interval, 0.25))
            settled = await anyio.to_thread.run_sync(state.registry.signature)
            if settled != now:
                continue
            log.info("shelf changed; reloading")
            await reload(state)
            seen = settled
        except Exception:  # keep watching: one bad pass must not stop reloads for good
            log.exception("watching the shelf %s failed", settings.shelf)


def _quiet_loop_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log the event loop's recurring errors (accept() out of file descriptors: one per second
    with a traceback each, for as long as it lasts) once per interval, with a count."""
    rate_limited = RateLimited(log, interval=10.0)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "event loop error")
        exc = context.get("exception")
        detail = f"{message}: {type(exc).__name__}: {exc}" if exc is not None else message
        rate_limited(message, logging.ERROR, "%s", detail)

    loop.set_exception_handler(handler)


# -- the app -------------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> Starlette:
    """The activator as an ASGI app over ``settings.shelf``."""
    settings = settings or Settings.from_env()
    metrics_ = Metrics(settings.metrics_dir)
    publishing = Publishing(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        runtime = RuntimeSettings(intra_op_threads=settings.ort_threads, inter_op_threads=1)
        state = State(
            settings=settings,
            registry=Registry(settings.shelf, runtime, verify_vectors=settings.verify_vectors),
            metrics=metrics_,
            dispatcher=Dispatcher(settings.inference_threads),
            generations=_generations(settings),
        )
        _quiet_loop_errors(asyncio.get_running_loop())
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_load_then_watch, state)
                yield {"activator": state}
                tasks.cancel_scope.cancel()
        finally:
            state.dispatcher.close()
            metrics_.close()

    routes = [
        # The call routes first: they are the hot path, and every route tried before costs a regex
        # match. The KGrid 1.x route yields to every other route's first segment (kos, v2, ...).
        *routes_kgrid.call_routes(),
        Route("/", root, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Route("/admin/reload", admin_reload, methods=["POST"]),
        *([Route("/_bench/echo", bench_echo, methods=["POST"])] if settings.bench_echo else []),
        *_cds_routes(settings),
        *routes_kgrid.routes,
        *publishing.routes,  # after GET /kos: a 405 on /kos then answers Allow: GET, HEAD as before
        *oip.routes,
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                RequestContext,
                metrics=metrics_,
                access_log=settings.access_log,
                body_timeout=settings.body_timeout,
                before=_follow_generation,
            )
        ],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    app.state.publishing = publishing
    for route in app.router.routes:
        if isinstance(route, routes_kgrid.KORoute):
            route.siblings = app.router.routes  # the live list: routes added later are seen too
    return app


def _generations(settings: Settings) -> Generations | None:
    if settings.generation_file is None or settings.workers_dir is None:
        return None
    return Generations(settings.generation_file, settings.workers_dir)


async def _follow_generation(scope: Scope) -> None:
    """Before each request: catch up with a reload another worker made (one ``stat`` when none)."""
    state = scope.get("state", {}).get("activator")
    if state is not None and state.generations is not None and state.registry.ready:
        await catch_up(state)


def _served_kos(request: Any) -> list[Any]:
    return [ko for _, ko in request.state.activator.registry.current.served()]


def _cds_routes(settings: Settings) -> list[Any]:
    """CDS Hooks 2.0 services for every served KO function that declares FHIR bindings."""
    from activator.cds_hooks import CdsHooks, CdsSettings

    cds = CdsHooks(
        _served_kos,
        CdsSettings(
            no_auth=settings.cds_no_auth,
            issuers_file=settings.cds_issuers,
            public_url=settings.public_url,
            store_path=settings.cds_db or settings.shelf / ".kgrid" / "cds.sqlite3",
        ),
    )
    return list(cds.routes)


def configure_logging(level: int = logging.INFO) -> None:
    """One handler for the activator's loggers (uvicorn configures only its own)."""
    logger = logging.getLogger("activator")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def app_from_env() -> Starlette:
    """The factory uvicorn's worker processes call (``--workers N``): settings from the environment."""
    configure_logging()
    return create_app(Settings.from_env())
