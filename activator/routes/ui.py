"""The web catalogue: browse, read, try and curate every KO version in a browser, under ``/ui/``.

Server-rendered Jinja2 (autoescaped) with one stylesheet and one script, both served from
``/ui/static/``: no build step, no CDN, so it works on a hospital network with no Internet. Every
page carries a Content-Security-Policy that allows only this origin's script and style, and no
inline script or style at all; model cards are sanitised (:mod:`activator.markdown`).

The "try it" form posts JSON to the KGrid 2.0 route (``/endpoints/{id}/{endpoint}?v=X.Y.Z``), so
it shows exactly the API's numbers, warnings and field errors. Curator actions (publish an archive,
change a version's status) are two steps, a preview and a confirmation, each confirmation
authorised by a publish/admin token typed into the form (never stored in a cookie, so another site
cannot forge the request) and audited by the library functions ``kgrid publish``/``kgrid status``
call. ``GET /`` from a browser (``Accept: text/html``) redirects here; JSON clients keep ``/``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

import anyio
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Scope

from activator.catalogue import (
    MAX_QUERY,
    STATUSES,
    bounds_text,
    interpretation,
    metadata_of,
    summaries,
    units_of,
    version_view,
)
from activator.http import read_body, state_of
from activator.markdown import MAX_CARD_BYTES, render_markdown
from activator.monitoring import (
    LABELS,
    MAX_WINDOW_DAYS,
    MonitorCache,
    ReportKey,
    calibration_png,
    default_since,
    metric_rows,
    volume_png,
)
from activator.problems import Problem, without_paths
from activator.registry import Snapshot
from activator.reloading import reload_everywhere
from activator.settings import Settings
from kgrid_py.curation.archive import inspect, pack
from kgrid_py.curation.errors import Forbidden, Unauthorized, http_status
from kgrid_py.curation.lifecycle import SETTABLE, normalise_time, set_status
from kgrid_py.curation.publish import PublishPolicy, publish_archive
from kgrid_py.curation.tokens import Principal, TokenStore
from kgrid_py.errors import KgridError, NotFound
from kgrid_py.learning.monitor import MonitorError
from kgrid_py.learning.store import CaptureStore, StoreError
from kgrid_py.metadata import FunctionSpec
from kgrid_py.shelf import STATE_DIR, InvalidReference, Reference, ShelfEntry

__all__ = ["CSP", "Catalogue", "Curator"]

log = logging.getLogger("activator")

HERE = Path(__file__).resolve().parent.parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_MAX_FORM = 64 * 1024
_FORM_OVERHEAD = 1_048_576  # multipart boundaries and the token field around the archive
PENDING_TTL_S = 15 * 60
MAX_PENDING = 8
_PENDING_ID = re.compile(r"^[0-9a-f]{32}$")


class Curator(Protocol):
    """What the curator pages need from the publishing routes (handed over by ``create_app``)."""

    tokens: TokenStore
    policy: PublishPolicy
    configured: bool

    def refuse(self, request: Request, status: int, detail: str, role: str) -> Exception: ...


class PageError(Exception):
    """An error shown as an HTML page (the catalogue's counterpart of a problem+json answer)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def wants_html(scope: Scope) -> bool:
    """Whether the client asks for HTML by name (a browser), not merely accepts anything (curl, JSON clients)."""
    for name, value in scope.get("headers", []):
        if name == b"accept":
            for part in value.decode("latin-1").split(","):
                media, _, params = part.strip().partition(";")
                if media.strip().lower() in ("text/html", "application/xhtml+xml"):
                    quality = re.search(r"q\s*=\s*([0-9.]+)", params)
                    return quality is None or _positive(quality.group(1))
    return False


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


class _BrowserRoute(Route):
    """``GET /`` for browsers only: any other request falls through to the service's JSON ``/``."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and not wants_html(scope):
            return Match.NONE, {}
        return super().matches(scope)


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.globals["statuses"] = STATUSES
    env.filters["bounds"] = bounds_text
    env.filters["units"] = units_of
    env.filters["pretty_unit"] = _pretty_unit
    return templates


def _pretty_unit(unit: str | None) -> str:
    """A UCUM unit as clinicians write it (``mL/min/{1.73_m2}`` -> ``mL/min/1.73 m²``)."""
    if not unit or unit == "1":
        return ""
    shown = unit.replace("{1.73_m2}", "1.73 m²").replace("umol", "µmol").replace("[", "").replace("]", "")
    return {"a": "years", "mo": "months", "wk": "weeks", "d": "days"}.get(shown, shown)


class Catalogue:
    """The catalogue's routes for one app: pages, static files and the curator actions."""

    def __init__(self, settings: Settings, curator: Curator) -> None:
        self.settings = settings
        self.curator = curator
        self.templates = _templates()
        self.monitors = MonitorCache()

    @property
    def routes(self) -> list[BaseRoute]:
        page = self._page
        return [
            _BrowserRoute("/", self.to_catalogue, methods=["GET"]),
            Route("/ui", self.to_catalogue, methods=["GET"]),
            Route("/ui/", page(self.index), methods=["GET"]),
            Route("/ui/kos/{ko_id}", page(self.ko), methods=["GET"]),
            Route("/ui/kos/{ko_id}/{version}", page(self.version), methods=["GET"]),
            Route("/ui/kos/{ko_id}/{version}/archive.zip", page(self.archive), methods=["GET"]),
            Route("/ui/kos/{ko_id}/{version}/try/{endpoint}", page(self.try_it), methods=["GET"]),
            Route("/ui/kos/{ko_id}/{version}/monitor", page(self.monitor_first), methods=["GET"]),
            Route("/ui/kos/{ko_id}/{version}/monitor/{function}", page(self.monitor_page), methods=["GET"]),
            Route("/ui/kos/{ko_id}/{version}/monitor/{function}/volume.png", page(self.volume_plot), methods=["GET"]),
            Route(
                "/ui/kos/{ko_id}/{version}/monitor/{function}/calibration.png",
                page(self.calibration_plot),
                methods=["GET"],
            ),
            Route("/ui/curate", page(self.curate), methods=["GET"]),
            Route("/ui/curate/publish", page(self.publish_preview), methods=["POST"]),
            Route("/ui/curate/publish/confirm", page(self.publish_confirm), methods=["POST"]),
            Route("/ui/curate/status", page(self.status_preview), methods=["POST"]),
            Route("/ui/curate/status/confirm", page(self.status_confirm), methods=["POST"]),
            Mount("/ui/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
            Route("/ui/{rest:path}", page(self.not_found), methods=["GET"]),
        ]

    # -- plumbing ------------------------------------------------------------------------------------

    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        response = self.templates.TemplateResponse(request, name, context, status_code=status_code)
        response.headers.update(_SECURITY_HEADERS)
        return response

    def _page(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Every UI handler: errors as HTML pages (not problem+json) and the security headers on every answer."""

        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            try:
                response = await handler(request)
            except PageError as exc:
                response = self.render(request, "error.html", exc.status, title=exc.title, detail=exc.detail)
            except Problem as exc:
                response = self.render(request, "error.html", exc.status, title="Request refused", detail=exc.detail)
            for key, value in _SECURITY_HEADERS.items():
                response.headers.setdefault(key, value)
            return response

        return wrapped

    def snapshot(self, request: Request) -> Snapshot:
        registry = state_of(request).registry
        if not registry.ready:
            raise PageError(503, "Still loading", "The shelf is still loading; reload this page in a moment.")
        return registry.current

    def entry(self, snapshot: Snapshot, ko_id: str, version: str) -> ShelfEntry:
        for entry in snapshot.versions(ko_id):
            if entry.version == version:
                return entry
        for failure in snapshot.failures(ko_id):
            if failure.version == version:
                raise PageError(404, "Not served", f"{ko_id} {version} failed to load: {without_paths(failure.reason)}")
        raise PageError(404, "Not found", f"There is no KO version {ko_id} {version} on this shelf.")

    # -- pages -----------------------------------------------------------------------------------------

    async def to_catalogue(self, request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=303)

    async def not_found(self, request: Request) -> Response:
        raise PageError(404, "Not found", "There is no page at this address. The catalogue lists every KO.")

    async def index(self, request: Request) -> Response:
        snapshot = self.snapshot(request)
        query = request.query_params.get("q", "")[:MAX_QUERY].strip()
        keyword = request.query_params.get("keyword", "")[:MAX_QUERY].strip()
        status = request.query_params.get("status", "")
        if status and status not in STATUSES:
            raise PageError(400, "Unknown status", f"Filter by one of: {', '.join(STATUSES)}.")
        rows = await anyio.to_thread.run_sync(summaries, snapshot)
        shown = [row for row in rows if row.matches(query, keyword, status)]
        keywords = sorted({k for row in rows for k in row.keywords}, key=str.casefold)
        return self.render(
            request,
            "catalogue.html",
            rows=shown,
            total=len(rows),
            query=query,
            keyword=keyword,
            status=status,
            keywords=keywords,
        )

    async def ko(self, request: Request) -> Response:
        snapshot = self.snapshot(request)
        ko_id = request.path_params["ko_id"]
        versions = sorted(snapshot.versions(ko_id), key=lambda e: e.semver, reverse=True)
        if not versions:
            raise PageError(404, "Not found", f"There is no KO {ko_id!r} on this shelf.")
        try:
            chosen = snapshot.resolve(ko_id, None)
        except (NotFound, InvalidReference):
            chosen = versions[0]
        return RedirectResponse(f"/ui/kos/{ko_id}/{chosen.version}", status_code=303)

    async def version(self, request: Request) -> Response:
        snapshot = self.snapshot(request)
        entry = self.entry(snapshot, request.path_params["ko_id"], request.path_params["version"])
        shelf = state_of(request).registry.shelf.root
        try:
            view = await anyio.to_thread.run_sync(version_view, snapshot, shelf, entry)
        except (KgridError, OSError) as exc:
            raise PageError(500, "Unreadable", f"This version cannot be read: {without_paths(str(exc))}") from None
        card = await anyio.to_thread.run_sync(_card_html, entry.path, view.metadata)
        return self.render(request, "version.html", view=view, md=view.metadata, card=card)

    async def archive(self, request: Request) -> Response:
        snapshot = self.snapshot(request)
        entry = self.entry(snapshot, request.path_params["ko_id"], request.path_params["version"])
        try:
            data = await anyio.to_thread.run_sync(pack, entry.path)
        except (KgridError, OSError) as exc:
            raise PageError(409, "Cannot pack", f"This version cannot be packed: {without_paths(str(exc))}") from None
        name = f"{entry.ko_id}-{entry.version}.zip"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(data, media_type="application/zip", headers=headers)

    async def try_it(self, request: Request) -> Response:
        snapshot = self.snapshot(request)
        entry = self.entry(snapshot, request.path_params["ko_id"], request.path_params["version"])
        endpoint = request.path_params["endpoint"]
        ko = snapshot.kos.get((entry.ko_id, entry.version))
        if entry.status == "retired" or ko is None:
            successor = f" Its successor is {entry.successor}." if entry.successor else ""
            raise PageError(410, "Not served", f"{entry.ko_id} {entry.version} is {entry.status}.{successor}")
        if endpoint not in ko.functions:
            raise PageError(404, "Not found", f"{ko.ref} has no function {endpoint!r}.")
        function = ko.function(endpoint)
        files = [f.name for f in function.inputs if f.type == "tensor"]
        address = f"/endpoints/{entry.ko_id}/{endpoint}?{urlencode({'v': entry.version})}"
        outputs = [{"name": o.name, "unit": o.unit, "description": o.description} for o in function.outputs]
        return self.render(
            request,
            "try.html",
            entry=entry,
            md=ko.metadata,
            function=function,
            files=files,
            address=address,
            outputs=outputs,
            indicators=interpretation(function),
        )

    # -- monitoring ----------------------------------------------------------------------------------------

    async def monitor_first(self, request: Request) -> Response:
        """``.../monitor``: the first function's page (most KOs have one function)."""
        _, entry, functions = await self._functions(request)
        if not functions:
            raise PageError(404, "Not found", f"{entry.ko_id} {entry.version} declares no function.")
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"/ui/kos/{entry.ko_id}/{entry.version}/monitor/{functions[0].name}{query}", 303)

    async def monitor_page(self, request: Request) -> Response:
        """Per site: volume, refusal and warning rates and, with outcomes, the key metrics and alerts."""
        snapshot, entry, functions = await self._functions(request)
        function = _function(functions, request.path_params["function"], entry)
        context: dict[str, Any] = {"entry": entry, "function": function, "functions": functions}
        store = _store_of(request)
        if store is None:
            return self.render(request, "monitor.html", capture=False, **context)
        key = _report_key(request, snapshot.generation, entry, function)
        report = await self._report(store, key, function)
        sites = [
            {"section": section, "performance": metric_rows(report, section["site"])} for section in report["sites"]
        ]
        return self.render(
            request,
            "monitor.html",
            capture=True,
            report=report,
            sites=sites,
            since=key.since.isoformat(),
            base=f"/ui/kos/{entry.ko_id}/{entry.version}/monitor/{function.name}",
            ttl=int(self.monitors.ttl_s),
            labels=LABELS,
            **context,
        )

    async def volume_plot(self, request: Request) -> Response:
        key, report, site = await self._plot_report(request)
        section = next((s for s in report["sites"] if s["site"] == site and s["volume"]), None)
        if section is None:
            raise PageError(404, "No calls", f"No calls were captured at site {site!r} in this window.")
        png = await self.monitors.plot(key, report, ("volume", site), lambda _: volume_png(section["volume"]))
        return _png_response(png)

    async def calibration_plot(self, request: Request) -> Response:
        key, report, site = await self._plot_report(request)
        horizon = request.query_params.get("horizon", "")[:MAX_QUERY]
        perf = next(
            (
                p
                for s in report["sites"]
                if s["site"] == site
                for p in s["performance"]
                if (p["horizon"] or "") == horizon and p.get("curve")
            ),
            None,
        )
        if perf is None:
            raise PageError(404, "No calibration curve", "There are too few linked outcomes here for a curve.")
        png = await self.monitors.plot(key, report, ("calibration", site, horizon), lambda _: calibration_png(perf))
        return _png_response(png)

    async def _functions(self, request: Request) -> tuple[Snapshot, ShelfEntry, list[FunctionSpec]]:
        snapshot = self.snapshot(request)
        entry = self.entry(snapshot, request.path_params["ko_id"], request.path_params["version"])
        try:
            metadata, _ = await anyio.to_thread.run_sync(metadata_of, snapshot, entry)
        except (KgridError, OSError) as exc:
            raise PageError(500, "Unreadable", f"This version cannot be read: {without_paths(str(exc))}") from None
        return snapshot, entry, list(metadata.functions)

    async def _report(self, store: CaptureStore, key: ReportKey, function: FunctionSpec) -> dict[str, Any]:
        try:
            return await self.monitors.report(store, key, function)
        except StoreError:
            log.exception("monitoring %s@%s %s: capture store unreadable", key.ko_id, key.version, key.function)
            detail = "The capture store cannot be read now; try again in a moment."
            raise PageError(503, "Capture store unavailable", detail) from None
        except MonitorError as exc:
            raise PageError(422, "Cannot monitor", str(exc)) from None

    async def _plot_report(self, request: Request) -> tuple[ReportKey, dict[str, Any], str]:
        snapshot, entry, functions = await self._functions(request)
        function = _function(functions, request.path_params["function"], entry)
        store = _store_of(request)
        if store is None:
            raise PageError(404, "Capture is off", "This server does not capture calls (kgrid serve --capture).")
        site = request.query_params.get("site", "")
        if not site or len(site) > MAX_QUERY:
            raise PageError(400, "Which site", "Name the site (?site=...) of the plot.")
        key = _report_key(request, snapshot.generation, entry, function)
        return key, await self._report(store, key, function), site

    # -- curator actions -------------------------------------------------------------------------------

    async def curate(self, request: Request) -> Response:
        snapshot = self.snapshot(request)
        refs = [f"{e.ko_id}@{e.version}" for e in sorted(snapshot.entries, key=lambda e: (e.ko_id, e.semver))]
        return self.render(
            request,
            "curate.html",
            refs=refs,
            settable=SETTABLE,
            configured=self.curator.configured,
            selected=request.query_params.get("ref", "")[:MAX_QUERY],
            max_mib=self.settings.max_archive_bytes // 1_048_576,
        )

    def authorize(self, request: Request, token: str, role: str) -> Principal:
        """The token's principal, or an HTML 401/403 (audited like the API's refusals)."""
        try:
            return self.curator.tokens.authorize(f"Bearer {token.strip()}", role)
        except Unauthorized as exc:
            self.curator.refuse(request, 401, f"{exc} (catalogue form)", role)
            raise PageError(401, "Not authorised", f"{exc}. Type a token issued with the {role!r} role.") from None
        except Forbidden as exc:
            self.curator.refuse(request, 403, f"{exc} (catalogue form)", role)
            raise PageError(403, "Forbidden", f"{exc}.") from None

    async def form(self, request: Request) -> dict[str, str]:
        """A small urlencoded form (64 KiB at most, 20 fields), every value stripped."""
        body = await read_body(request, _MAX_FORM)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            raise PageError(400, "Malformed form", "The form could not be read; send it again from the page.") from None
        return {key: value.strip() for key, value in pairs}

    async def publish_preview(self, request: Request) -> Response:
        """Step 1: check the token and the archive's shape, keep it aside, and ask for confirmation."""
        limit = self.settings.max_archive_bytes + _FORM_OVERHEAD
        body = await read_body(request, limit)
        token, data = await _archive_form(request, body, self.settings.max_archive_bytes)
        principal = self.authorize(request, token, "publish")
        if not data:
            raise PageError(400, "No archive", "Choose the archive file `kgrid pack` wrote.")
        try:
            info = await anyio.to_thread.run_sync(inspect, data, self.curator.policy.limits)
        except KgridError as exc:
            raise _refusal(exc, "This archive cannot be published") from None
        pending = await anyio.to_thread.run_sync(
            _keep_pending, state_of(request).registry.shelf.root, data, principal.name
        )
        snapshot = self.snapshot(request)
        existing = [e.version for e in snapshot.versions(info.ko_id)]
        return self.render(
            request,
            "confirm_publish.html",
            info=info,
            title=str(info.metadata.get("dc:title", "")),
            pending=pending,
            existing=existing,
            size=len(data),
        )

    async def publish_confirm(self, request: Request) -> Response:
        """Step 2: the same principal confirms; publish through the library (which audits it) and reload."""
        fields = await self.form(request)
        principal = self.authorize(request, fields.get("token", ""), "publish")
        if fields.get("confirm") != "yes":
            raise PageError(400, "Not confirmed", "Tick the confirmation box to publish.")
        state = state_of(request)
        shelf = state.registry.shelf.root
        data = await anyio.to_thread.run_sync(_take_pending, shelf, fields.get("pending", ""), principal.name)
        publish = functools.partial(publish_archive, data, shelf, self.curator.policy, actor=principal.name)
        try:
            outcome = await anyio.to_thread.run_sync(publish)
        except KgridError as exc:
            raise _refusal(exc, "Publication refused") from None
        done = "published" if outcome.changed else "unchanged"
        log.info("%s: %s by %s (catalogue)", outcome.ref, done, principal.name)
        if outcome.changed:
            await reload_everywhere(state)
        return self.render(
            request,
            "done.html",
            heading="Published" if outcome.changed else "Already published",
            message=(
                f"{outcome.ref} is on the shelf as {outcome.status}."
                if outcome.changed
                else f"{outcome.ref} was already published with exactly this content; nothing changed."
            ),
            link=f"/ui/kos/{outcome.ko_id}/{outcome.version}",
        )

    async def status_preview(self, request: Request) -> Response:
        """Step 1 of a status change: check the request's shape and show exactly what will change."""
        fields = await self.form(request)
        ref, status, successor, sunset = _status_fields(fields)
        snapshot = self.snapshot(request)
        ko_id, _, version = ref.partition("@")
        entry = self.entry(snapshot, ko_id, version)
        return self.render(
            request,
            "confirm_status.html",
            entry=entry,
            ref=ref,
            status=status,
            successor=successor,
            sunset=sunset,
        )

    async def status_confirm(self, request: Request) -> Response:
        """Step 2: with an admin token, set the status through the library (which audits it) and reload."""
        fields = await self.form(request)
        principal = self.authorize(request, fields.get("token", ""), "admin")
        if fields.get("confirm") != "yes":
            raise PageError(400, "Not confirmed", "Tick the confirmation box to change the status.")
        ref, status, successor, sunset = _status_fields(fields)
        state = state_of(request)
        change_it = functools.partial(
            set_status,
            state.registry.shelf.root,
            ref,
            status,
            principal.name,
            successor=successor or None,
            sunset=sunset or None,
        )
        try:
            change = await anyio.to_thread.run_sync(change_it)
        except KgridError as exc:
            raise _refusal(exc, "Status change refused") from None
        log.info("%s: %s -> %s by %s (catalogue)", change.ref, change.previous, change.status, principal.name)
        if change.changed:
            await reload_everywhere(state)
        ko_id, _, version = ref.partition("@")
        message = (
            f"{change.ref} was {change.previous} and is now {change.status}."
            if change.changed
            else f"{change.ref} was already {change.status}; nothing changed."
        )
        return self.render(request, "done.html", heading="Status changed", message=message,
                           link=f"/ui/kos/{ko_id}/{version}")  # fmt: skip


# -- helpers -----------------------------------------------------------------------------------------------


def _store_of(request: Request) -> CaptureStore | None:
    """The capture store when the server runs with --capture, else None."""
    capture = state_of(request).capture
    return None if capture is None else capture.writer.store  # type: ignore[no-any-return]


def _function(functions: list[FunctionSpec], name: str, entry: ShelfEntry) -> FunctionSpec:
    for function in functions:
        if function.name == name:
            return function
    raise PageError(404, "Not found", f"{entry.ko_id} {entry.version} has no function {name!r}.")


def _report_key(request: Request, generation: int, entry: ShelfEntry, function: FunctionSpec) -> ReportKey:
    """The report a request asks for: every site since ``?since=YYYY-MM-DD`` (default: :func:`default_since`).

    One report per window serves the page and all its plots (a plot's ``?site=`` picks a section of it).
    """
    today = time.gmtime()
    today_date = dt.date(today.tm_year, today.tm_mon, today.tm_mday)
    text = request.query_params.get("since", "")
    if text:
        try:
            since = dt.date.fromisoformat(text[:10]) if len(text) == 10 else None
        except ValueError:
            since = None
        if since is None:
            raise PageError(400, "Bad date", f"since must be a date, YYYY-MM-DD; got {text[:40]!r}.")
        if since > today_date or (today_date - since).days > MAX_WINDOW_DAYS:
            raise PageError(400, "Bad window", f"since must be a date in the last {MAX_WINDOW_DAYS} days.")
    else:
        since = default_since(function, today_date)
    return ReportKey(entry.ko_id, entry.version, function.name, None, since, generation)


def _png_response(png: bytes) -> Response:
    headers = {**_SECURITY_HEADERS, "Cache-Control": "private, max-age=60"}
    return Response(png, media_type="image/png", headers=headers)


def _card_html(path: Path, metadata: Any) -> str | None:
    """The version's model card (the file listed with role model-card, else README.md) as safe HTML."""
    name = next((f.path for f in metadata.files if f.role == "model-card"), "README.md")
    file = path / name
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_CARD_BYTES + 4)
    except OSError:
        return None
    return render_markdown(raw.decode("utf-8", errors="replace"))


def _status_fields(fields: dict[str, str]) -> tuple[str, str, str, str]:
    ref, status = fields.get("ref", ""), fields.get("status", "")
    successor, sunset = fields.get("successor", ""), fields.get("sunset", "")
    try:
        exact = Reference.parse(ref).is_exact
    except InvalidReference:
        exact = False
    if not exact:
        raise PageError(422, "Choose a version", f"{ref!r} is not an exact KO version (id@X.Y.Z).")
    if status not in SETTABLE:
        raise PageError(422, "Choose a status", f"The status must be one of {', '.join(SETTABLE)}.")
    if successor:
        try:
            Reference.parse(successor)
        except InvalidReference as exc:
            raise PageError(422, "Successor", f"The successor {successor!r} is not a reference: {exc}") from None
    if sunset:
        try:
            normalise_time(sunset)
        except KgridError as exc:
            raise PageError(422, "Sunset", str(exc)) from None
    return ref, status, successor, sunset


async def _archive_form(request: Request, body: bytes, max_archive: int) -> tuple[str, bytes]:
    """The token and archive of a ``multipart/form-data`` upload (the body already read, so bounded)."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise PageError(415, "Not a file upload", "Send the archive from the upload form.")
    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=4, max_part_size=_MAX_FORM)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise PageError(400, "Malformed upload", f"The upload could not be read: {exc.message}") from None
    try:
        token = form.get("token")
        upload = form.get("archive")
        data = await upload.read(max_archive + 1) if isinstance(upload, UploadFile) else b""
    finally:
        await form.close()
    if len(data) > max_archive:
        raise PageError(413, "Too large", f"The archive is over {max_archive} bytes, the most this server takes.")
    return (token if isinstance(token, str) else ""), data


def _pending_dir(shelf: Path) -> Path:
    return Path(shelf) / STATE_DIR / "ui-pending"


def _keep_pending(shelf: Path, data: bytes, principal: str) -> str:
    """Keep an uploaded archive until its confirmation (on the shelf, so any worker can take it)."""
    folder = _pending_dir(shelf)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    kept = []
    for file in folder.glob("*.zip"):
        try:
            if now - file.stat().st_mtime > PENDING_TTL_S:
                file.unlink(missing_ok=True)
                file.with_suffix(".json").unlink(missing_ok=True)
            else:
                kept.append(file)
        except OSError:
            continue
    if len(kept) >= MAX_PENDING:
        raise PageError(503, "Busy", "Too many uploads await confirmation; confirm them or try again in 15 minutes.")
    pending = secrets.token_hex(16)
    (folder / f"{pending}.json").write_text(json.dumps({"principal": principal, "at": now}), encoding="utf-8")
    (folder / f"{pending}.zip").write_bytes(data)
    return pending


def _take_pending(shelf: Path, pending: str, principal: str) -> bytes:
    """The archive kept by ``_keep_pending``, for the principal who uploaded it, once."""
    folder = _pending_dir(shelf)
    gone = PageError(410, "Upload expired", "This upload is no longer waiting (confirmed, or over 15 minutes old).")
    if not _PENDING_ID.match(pending):
        raise gone
    try:
        note = json.loads((folder / f"{pending}.json").read_text(encoding="utf-8"))
        data = (folder / f"{pending}.zip").read_bytes()
    except (OSError, ValueError):
        raise gone from None
    if note.get("principal") != principal:
        raise PageError(403, "Forbidden", "Only the curator who uploaded this archive can confirm it.")
    if time.time() - float(note.get("at", 0)) > PENDING_TTL_S:
        raise gone
    (folder / f"{pending}.zip").unlink(missing_ok=True)
    (folder / f"{pending}.json").unlink(missing_ok=True)
    return data


def _refusal(exc: KgridError, what: str) -> PageError:
    status = http_status(exc)
    if status >= 500:
        status = 422
    return PageError(status, what, f"{what}: {without_paths(Exception.__str__(exc))}")
