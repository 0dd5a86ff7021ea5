"""``create_app(settings)``: the activator's routes, middleware and error table, in one place.

The lifespan builds everything a request needs (the registry of loaded KOs, metrics, the
dispatcher that runs inference in a bounded thread pool) and hands it to requests as state;
nothing lives in module globals.
It loads the shelf in the background, so ``/health`` answers at once and ``/ready`` once loaded,
and, with ``watch``, polls the shelf and reloads when a KO folder changes.
"""

from __future__ import annotations

import gc
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

from activator import oip, routes_kgrid
from activator.dispatch import Dispatcher
from activator.docs import docs_page
from activator.http import State, json_response, parse_json, read_body, state_of
from activator.metrics import CONTENT_TYPE_LATEST, Metrics
from activator.middleware import RequestContext
from activator.openapi import combined_spec
from activator.problems import Problem, exception_handlers
from activator.publishing import Publishing, reload_everywhere
from activator.registry import Registry, Snapshot
from activator.settings import Settings
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
    request.app.state.publishing.authorize_reload(request, state.settings.admin_token)
    return json_response(_loaded(await reload_everywhere(state)))


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


async def reload(state: State) -> Any:
    snapshot = await anyio.to_thread.run_sync(state.registry.reload)
    # Loaded KOs are long-lived: keep them out of the collector's full passes, which otherwise
    # stall requests for tens of milliseconds (p99 at concurrency 32 fell from ~50 ms to ~15 ms).
    # Unfreezing first lets the collection free what the previous snapshot no longer needs.
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    served = sum(1 for _ in snapshot.served())
    state.metrics.served.set(served)
    state.metrics.failed.set(len(snapshot.failed))
    state.metrics.generation.set(snapshot.generation)
    return snapshot


async def _load_then_watch(state: State) -> None:
    settings = state.settings
    signal = settings.reload_signal
    last_signal = _read(signal)  # before loading: a reload signalled meanwhile is then not missed
    seen = await anyio.to_thread.run_sync(state.registry.signature)
    try:
        await reload(state)
    except Exception:
        log.exception("could not load the shelf %s", settings.shelf)
    while settings.watch or signal is not None:
        await anyio.sleep(settings.watch_interval)
        try:
            current_signal = _read(signal)
            if current_signal != last_signal:
                last_signal = current_signal
                await reload(state)
                continue
            if not settings.watch:
                continue
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


def _read(path: Any) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError:
        return None


# -- the app -------------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> Starlette:
    """The activator as an ASGI app over ``settings.shelf``."""
    settings = settings or Settings.from_env()
    metrics_ = Metrics()
    publishing = Publishing(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        runtime = RuntimeSettings(intra_op_threads=settings.ort_threads, inter_op_threads=1)
        state = State(
            settings=settings,
            registry=Registry(settings.shelf, runtime, verify_vectors=settings.verify_vectors),
            metrics=metrics_,
            dispatcher=Dispatcher(settings.inference_threads),
        )
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_load_then_watch, state)
                yield {"activator": state}
                tasks.cancel_scope.cancel()
        finally:
            state.dispatcher.close()

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
        middleware=[Middleware(RequestContext, metrics=metrics_, access_log=settings.access_log)],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    app.state.publishing = publishing
    for route in app.router.routes:
        if isinstance(route, routes_kgrid.KORoute):
            route.siblings = app.router.routes  # the live list: routes added later are seen too
    return app


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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def app_from_env() -> Starlette:
    """The factory uvicorn's worker processes call (``--workers N``): settings from the environment."""
    configure_logging()
    return create_app(Settings.from_env())
