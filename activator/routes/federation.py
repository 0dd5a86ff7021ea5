"""The coordinating activator's mailbox for federated recalibration: sites only ever call out to it.

Served when ``Settings.federation_dir`` is set; each study is the folder mailbox
``federation_dir/<study>`` (:mod:`kgrid_py.learning.mailbox`), written by ``kgrid federate plan`` and
advanced by ``kgrid federate combine`` on the coordinating machine. Every route needs a site token
of that study (``kgrid federate token``; 401 without one, 403 for another study's or site's):

====================================  ===========================================================
GET  /federation/{study}/plan         the latest signed plan, as stored (full float64 precision)
GET  /federation/{study}/status       round, sites answered and awaited
POST /federation/{study}/messages     a signed message of the token's own site: checked against
                                      its round's plan (signature, study, round, plan digest, KO,
                                      minimums) before it is stored; 201 stored, 200 the same
                                      message again, 409 another message for that round, 403
                                      forged, 422 refused, 413 over 256 KiB
====================================  ===========================================================
"""

from __future__ import annotations

from pathlib import Path

import anyio
from cryptography.hazmat.primitives import serialization
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from activator.http import json_response, read_body, require_json
from activator.problems import Problem
from kgrid_py.curation.tokens import bearer_token
from kgrid_py.learning import federation as fd
from kgrid_py.learning.mailbox import SITE_NAME, Mailbox, site_of_token
from kgrid_py.learning.plans import FederationError, ForgedDocument, dumps, parse

__all__ = ["MAX_MESSAGE_BYTES", "Federation"]

MAX_MESSAGE_BYTES = 256 * 1024


class Federation:
    """The mailbox routes over ``root`` (one folder per study)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.routes = [
            Route("/federation/{study}/plan", self.plan, methods=["GET"]),
            Route("/federation/{study}/status", self.status, methods=["GET"]),
            Route("/federation/{study}/messages", self.message, methods=["POST"]),
        ]

    def _mailbox(self, request: Request) -> tuple[Mailbox, str]:
        """The study's mailbox and the site the bearer token belongs to (401/403/404 otherwise)."""
        study = request.path_params["study"]
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise Problem(401, "a site token is required", headers={"WWW-Authenticate": "Bearer"})
        box = Mailbox(self.root / study) if SITE_NAME.match(study) else None
        site = site_of_token(box, token) if box is not None and box.path.is_dir() else None
        if site is None:
            raise Problem(403, "this token is not a site token of this study")
        return box, site  # type: ignore[return-value]

    async def plan(self, request: Request) -> Response:
        box, _ = self._mailbox(request)
        document = await anyio.to_thread.run_sync(box.latest_plan)
        return Response(dumps(document), media_type="application/json")

    async def status(self, request: Request) -> Response:
        box, _ = self._mailbox(request)
        plan = (await anyio.to_thread.run_sync(box.latest_plan))["payload"]
        answered = sorted(d["payload"]["site"] for d in box.messages(plan["round"]))
        waiting = [s for s in plan["sites"] if s not in answered]
        done = (box.path / "result.json").exists()
        return json_response({"round": plan["round"], "answered": answered, "waiting": waiting, "converged": done})

    async def message(self, request: Request) -> Response:
        box, site = self._mailbox(request)
        require_json(request)
        body = await read_body(request, MAX_MESSAGE_BYTES)
        return await anyio.to_thread.run_sync(self._store, box, site, body)

    def _store(self, box: Mailbox, site: str, body: bytes) -> Response:
        try:
            document = parse(body, "message")
            payload = document["payload"]
            if payload.get("site") != site:
                raise Problem(403, f"this token is site {site!r}'s; the message is from {payload.get('site')!r}")
            plans = box.plan_documents()
            round_ = payload.get("round")
            if not isinstance(round_, int) or not 1 <= round_ <= len(plans):
                raise FederationError(f"no plan for round {round_!r} (the latest is round {len(plans)})")
            if round_ != len(plans):
                raise FederationError(f"round {round_} is closed; answer the latest plan (round {len(plans)})")
            coordinator = serialization.load_pem_public_key((box.path / "keys" / "coordinator.pub.pem").read_bytes())
            trusted = box.trusted(coordinator)  # type: ignore[arg-type]
            plan = fd.verify_plan(plans[-1], trusted)
            fd.check_message(plan, document, trusted)
            existing = box.path / "messages" / f"{round_:04d}" / f"{site}.json"
            if existing.exists():
                if existing.read_bytes() == dumps(document):
                    return json_response({"stored": False, "round": round_, "site": site}, 200)
                raise Problem(409, f"site {site!r} has already answered round {round_} with another message")
            box.put_message(document)
        except ForgedDocument as exc:
            raise Problem(403, str(exc)) from None
        except FederationError as exc:
            raise Problem(422, str(exc)) from None
        return json_response({"stored": True, "round": round_, "site": site}, 201)
