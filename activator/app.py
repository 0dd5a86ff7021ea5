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
from starlette.types import Scope

from activator.alerts import AlertGauge
from activator.capture import Capture
from activator.dispatch import Dispatcher
from activator.http import State
from activator.logs import RateLimited, SafeFormatter
from activator.metrics import Metrics
from activator.middleware import RequestContext
from activator.problems import exception_handlers
from activator.refusals import RefusalAudit
from activator.registry import Registry
from activator.reloading import catch_up, reload
from activator.routes import kgrid, oip, service
from activator.routes.capture_admin import CaptureAdmin
from activator.routes.federation import Federation
from activator.routes.outcomes import Outcomes
from activator.routes.publishing import Publishing
from activator.routes.ui import Catalogue
from activator.settings import Settings
from activator.workers import Generations
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer
from kgrid_py.runtime import RuntimeSettings

__all__ = ["app_from_env", "configure_logging", "create_app"]

log = logging.getLogger("activator")


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
    alerts = AlertGauge(metrics_.registry)  # kgrid_monitor_alert, refreshed by a periodic task

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        runtime = RuntimeSettings(intra_op_threads=settings.ort_threads, inter_op_threads=1)
        state = State(
            settings=settings,
            registry=Registry(settings.shelf, runtime, verify_vectors=settings.verify_vectors),
            metrics=metrics_,
            dispatcher=Dispatcher(settings.inference_threads, inline_budget=settings.inline_budget_ms / 1000),
            generations=_generations(settings),
            capture=_capture(settings, metrics_),
        )
        _quiet_loop_errors(asyncio.get_running_loop())
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_load_then_watch, state)
                tasks.start_soon(alerts.run, state)
                yield {"activator": state}
                tasks.cancel_scope.cancel()
        finally:
            state.dispatcher.close()
            if state.capture is not None:
                state.capture.close()
            metrics_.close()

    routes = [
        # The call routes first: they are the hot path, and every route tried before costs a regex
        # match. The KGrid 1.x route yields to every other route's first segment (kos, v2, ...).
        *kgrid.call_routes(),
        *oip.call_routes,  # OIP infer: the other hot path (its first segment, v2, is reserved from KORoute)
        *Catalogue(settings, publishing).routes,  # before the service's JSON `/`: browsers get /ui/
        *service.routes(settings),
        *_cds_routes(settings),
        *kgrid.routes,
        *publishing.routes,  # after GET /kos: a 405 on /kos then answers Allow: GET, HEAD as before
        *CaptureAdmin(publishing.authorize).routes,  # admin role, the publishing routes' token store
        *Outcomes(publishing.authorize, alerts.request_refresh).routes,  # POST /outcomes, admin role
        *oip.routes,
        *(Federation(settings.federation_dir).routes if settings.federation_dir else []),  # site mailboxes
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
        if isinstance(route, kgrid.KORoute):
            route.siblings = app.router.routes  # the live list: routes added later are seen too
    return app


def _capture(settings: Settings, metrics_: Metrics) -> Capture | None:
    """The capture store and its writer, when --capture is on (opened and migrated here)."""
    if settings.capture is None:
        return None
    store = CaptureStore.open(settings.capture)
    keyer = SubjectKeyer.resolve(settings.subject_secret_file)

    def committed(records: int) -> None:
        metrics_.capture_commits.inc()
        metrics_.capture_records.inc(records)

    return Capture(
        store,
        site=settings.site,
        keyer=keyer,
        policy=settings.capture_policy,
        on_lost=metrics_.capture_lost.inc,
        on_commit=committed,
    )


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
    from activator.routes.cds_hooks import CdsHooks, CdsSettings

    cds = CdsHooks(
        _served_kos,
        CdsSettings(
            no_auth=settings.cds_no_auth,
            issuers_file=settings.cds_issuers,
            public_url=settings.public_url,
            store_path=settings.cds_db or settings.shelf / ".kgrid" / "cds.sqlite3",
            audit=RefusalAudit(settings.shelf),
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
