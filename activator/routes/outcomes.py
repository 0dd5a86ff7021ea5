"""``POST /outcomes``: what happened to patients after their calls, into the capture store (admin role).

``POST /outcomes?ko=ID&function=NAME[&v=RANGE]`` names the KO function whose declared outcome the
rows are about (its outcome name, and for FHIR its codes); ``v`` defaults to the highest served
version. The body is either JSON rows (``{"rows": [...]}`` or a bare array of objects with the
fields of ``kgrid outcomes import``: ``patient_id``, ``event``, ``event_date``, ``followup_date``,
``competing_event``, ``competing_date``, ``value``, ``value_date``) or a FHIR ``Bundle`` of
Condition, Procedure and Observation resources matched against the declared codes.

Patient ids are keyed with this server's subject secret on the way in and never stored; the rows
belong to this server's ``--site``. The import is all or nothing: any bad row answers 422 with
every refused row number and reason (the first 50 listed, all counted), and nothing is stored.
Rows already stored are skipped, so posting the same rows again is harmless (idempotent). The
token check comes from the app (the publishing routes' token store), so this module imports no
other route family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from activator.http import json_response, parse_json, read_body, require_json, state_of
from activator.problems import Problem
from kgrid_py.errors import KgridError
from kgrid_py.learning.outcomes import (
    ImportReport,
    OutcomeImportError,
    OutcomeRow,
    fhir_bundle_rows,
    import_rows,
    rows_from_json,
)
from kgrid_py.learning.store import StoreError
from kgrid_py.metadata import OutcomeSpec

__all__ = ["MAX_OUTCOME_BODY_BYTES", "MAX_OUTCOME_ROWS", "Outcomes"]

MAX_OUTCOME_BODY_BYTES = 32 << 20
MAX_OUTCOME_ROWS = 100_000  # rows or Bundle entries per request; a larger import is `kgrid outcomes import`

Authorize = Callable[[Request, str], Any]


class Outcomes:
    """The route; ``authorize(request, role)`` raises the 401/403 problem, ``on_stored()`` is told of new rows."""

    def __init__(self, authorize: Authorize, on_stored: Callable[[], None] | None = None) -> None:
        self.authorize = authorize
        self.on_stored = on_stored
        self.routes = [Route("/outcomes", self.post, methods=["POST"])]

    async def post(self, request: Request) -> Response:
        principal = self.authorize(request, "admin")
        state = state_of(request)
        capture = state.capture
        if capture is None:
            raise Problem(404, "capture is off on this server (kgrid serve --capture): outcomes have nowhere to go")
        if capture.keyer is None:
            raise Problem(409, "this server has no subject secret to key patient ids with (--subject-secret-file)")
        spec = _declared_outcome(request)
        require_json(request)
        body = await read_body(request, MAX_OUTCOME_BODY_BYTES)
        source = f"http:{getattr(principal, 'name', 'admin')}"

        def run() -> ImportReport:
            rows = _rows(parse_json(body), spec)
            return import_rows(
                capture.writer.store,
                rows,
                site=capture.site,
                outcome=spec.name,
                keyer=capture.keyer,
                source=source,
                all_or_nothing=True,
            )

        try:
            report = await anyio.to_thread.run_sync(run)
        except OutcomeImportError as exc:
            raise Problem(422, str(exc)) from None
        except StoreError as exc:
            raise Problem(503, f"the capture store cannot be written: {exc}", headers={"Retry-After": "5"}) from None
        if report.refused:
            raise Problem(
                422,
                f"{report.refused} of {report.rows} rows refused; nothing was stored",
                errors=[{"row": str(p["row"]), "detail": p["error"]} for p in report.problems],
                refused=report.refused,
                rows=report.rows,
            )
        if report.inserted and self.on_stored is not None:
            self.on_stored()
        return json_response({**report.to_json(), "site": capture.site, "outcome": spec.name})


def _declared_outcome(request: Request) -> OutcomeSpec:
    """The outcome the named KO function declares (400 unnamed, 404 unknown, 422 none declared)."""
    query = request.query_params
    unknown = sorted(set(query) - {"ko", "function", "v"})
    if unknown:
        raise Problem(400, f"unknown parameter(s) {', '.join(unknown)}; use ko, function and optionally v")
    ko_id, function = query.get("ko"), query.get("function")
    if not ko_id or not function:
        raise Problem(400, "name the KO function the outcomes are about: ?ko=ID&function=NAME (and optionally v=)")
    snapshot = state_of(request).registry.current
    try:
        ko = snapshot.ko(snapshot.resolve(ko_id, query.get("v")))
        spec = ko.metadata.function(function)
    except KgridError as exc:
        raise Problem(404, str(exc)) from None
    if spec.outcome is None:
        raise Problem(422, f"{ko.id} {ko.version} {function} declares no outcome to link")
    return spec.outcome


def _rows(body: Any, spec: OutcomeSpec) -> list[OutcomeRow | tuple[int, str]]:
    """JSON rows or a FHIR Bundle's resources as outcome rows (bad ones as (row, reason))."""
    if isinstance(body, dict) and body.get("resourceType") is not None:
        entries = body.get("entry")
        if isinstance(entries, list) and len(entries) > MAX_OUTCOME_ROWS:
            raise OutcomeImportError(f"the Bundle has {len(entries)} entries; at most {MAX_OUTCOME_ROWS} per request")

        def codes(found: list[Any]) -> list[tuple[str, str]]:
            return [(c.system, c.code) for c in found]

        if spec.kind == "continuous":  # the codes find the measured value (an Observation), not an event
            return fhir_bundle_rows(body, codes=(), value_codes=codes(spec.codes))
        return fhir_bundle_rows(body, codes=codes(spec.codes), competing_codes=codes(spec.competing_codes))
    if isinstance(body, dict):
        if set(body) != {"rows"}:
            raise OutcomeImportError('send {"rows": [...]}, a JSON array of rows, or a FHIR Bundle')
        body = body["rows"]
    return rows_from_json(body, max_rows=MAX_OUTCOME_ROWS)
