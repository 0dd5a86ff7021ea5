"""The capture store over HTTP, admin role only: ``GET /capture/export`` and ``POST /capture/prune``.

Capture data is never served without a token: both routes check the bearer token (401 none or
unknown, 403 without the ``admin`` role) before anything else. ``GET /capture/export`` takes
``ko``, ``site``, ``since`` and ``until`` (``YYYY-MM-DD`` or ISO 8601 with offset) and answers the
Parquet file ``kgrid capture export`` writes, at most ``MAX_HTTP_EXPORT_ROWS`` calls (413 beyond:
narrow it, or run the CLI where the store is). ``POST /capture/prune`` takes ``{"before": DATE}``
and answers ``{"deleted": n}``. The token check comes from the app (the publishing routes' token
store), so this module imports no other route family.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from activator.http import json_response, parse_json, read_body, require_json, state_of
from activator.problems import Problem
from kgrid_py.learning.export import ExportError, export_parquet, parse_when
from kgrid_py.learning.store import CaptureStore, StoreError, to_us

__all__ = ["MAX_HTTP_EXPORT_ROWS", "CaptureAdmin"]

MAX_HTTP_EXPORT_ROWS = 2_000_000
_MAX_PRUNE_BODY = 4096

Authorize = Callable[[Request, str], Any]


class CaptureAdmin:
    """The two admin routes; ``authorize(request, role)`` raises the 401/403 problem."""

    def __init__(self, authorize: Authorize) -> None:
        self.authorize = authorize
        self.routes = [
            Route("/capture/export", self.export, methods=["GET"]),
            Route("/capture/prune", self.prune, methods=["POST"]),
        ]

    def _store(self, request: Request) -> CaptureStore:
        capture = state_of(request).capture
        if capture is None:
            raise Problem(404, "capture is off on this server (kgrid serve --capture)")
        return capture.writer.store  # type: ignore[no-any-return]

    async def export(self, request: Request) -> Response:
        self.authorize(request, "admin")
        store = self._store(request)
        query = request.query_params
        unknown = sorted(set(query) - {"ko", "site", "since", "until"})
        if unknown:
            raise Problem(400, f"unknown parameter(s) {', '.join(unknown)}; use ko, site, since, until")
        since, until = _when(query.get("since"), "since"), _when(query.get("until"), "until")
        folder = Path(tempfile.mkdtemp(prefix="kgrid-export-"))
        target = folder / "calls.parquet"

        def write() -> int:
            return export_parquet(
                store,
                target,
                ko_id=query.get("ko"),
                site=query.get("site"),
                since=since,
                until=until,
                max_rows=MAX_HTTP_EXPORT_ROWS,
            )

        try:
            rows = await anyio.to_thread.run_sync(write)
        except ExportError as exc:
            _remove(folder)
            raise Problem(413, str(exc), max_rows=MAX_HTTP_EXPORT_ROWS) from None
        except StoreError as exc:
            _remove(folder)
            raise Problem(503, f"the capture store cannot be read: {exc}", headers={"Retry-After": "5"}) from None
        except BaseException:
            _remove(folder)
            raise
        return FileResponse(
            target,
            media_type="application/vnd.apache.parquet",
            filename="calls.parquet",
            headers={"X-Capture-Rows": str(rows), "Cache-Control": "no-store"},
            background=BackgroundTask(_remove, folder),
        )

    async def prune(self, request: Request) -> Response:
        principal = self.authorize(request, "admin")
        store = self._store(request)
        require_json(request)
        body = parse_json(await read_body(request, _MAX_PRUNE_BODY))
        if not isinstance(body, dict) or set(body) != {"before"} or not isinstance(body["before"], str):
            raise Problem(400, 'send {"before": "YYYY-MM-DD"} (or an ISO 8601 time with its offset)')
        before = _when(body["before"], "before")
        assert before is not None
        try:
            deleted = await anyio.to_thread.run_sync(store.prune, to_us(before))
        except StoreError as exc:
            raise Problem(503, f"the capture store could not be pruned: {exc}", headers={"Retry-After": "5"}) from None
        actor = getattr(principal, "name", "admin")
        return json_response({"deleted": deleted, "before": before.isoformat(), "by": actor})


def _when(text: str | None, name: str) -> dt.datetime | None:
    if text is None or text == "":
        return None
    try:
        return parse_when(text)
    except ValueError as exc:
        raise Problem(400, f"{name}: {exc}") from None


def _remove(folder: Path) -> None:
    for path in folder.iterdir():
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()
