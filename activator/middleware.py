"""The one middleware: a request id, a body deadline, an access-log line and HTTP metrics for every request.

Pure ASGI (no ``BaseHTTPMiddleware``), because it sits on the latency path of every call.
``X-Request-ID`` is honoured when it is a sane token and generated otherwise; it is echoed in the
response, put in ``info`` and in problem bodies, and starts every log line about the request.

A client that sends its headers and then trickles (or withholds) its body would hold a task, a
socket and a buffer forever: the whole body must arrive within ``body_timeout`` seconds of the
request's start, else the answer is 408 and the connection is closed.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activator.logs import printable
from activator.metrics import Metrics
from activator.problems import Problem

__all__ = ["RequestContext"]

access = logging.getLogger("activator.access")
_SANE_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")


class RequestContext:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        access_log: bool = True,
        body_timeout: float = 60.0,
        before: Callable[[Scope], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.body_timeout = body_timeout
        self.before = before  # run first on every request (catching up with other workers' reloads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SANE_ID.match(value):
                request_id = value.decode()
                break
        if request_id is None:
            request_id = uuid.uuid4().hex
        scope["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        status = 500
        started = time.perf_counter()
        deadline = anyio.current_time() + self.body_timeout
        body_done = False

        async def receive_in_time() -> Message:
            nonlocal body_done
            if body_done:  # after the body only a disconnect can come: no deadline on waiting for it
                return await receive()
            with anyio.move_on_after(deadline - anyio.current_time()) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                raise Problem(
                    408,
                    f"the request body did not arrive within {self.body_timeout:g} s",
                    headers={"Connection": "close"},
                )
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            if self.before is not None:
                await self.before(scope)
            await self.app(scope, receive_in_time, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "(unmatched)")
            self.metrics.observe_http(scope["method"], route, status, elapsed)
            if self.access_log:
                # The path is decoded (%0a is a newline) and the method is any token: escape both.
                query = scope.get("query_string") or b""
                target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
                access.info(
                    "%s %s %s %d %.2fms",
                    request_id,
                    printable(scope["method"]),
                    printable(target),
                    status,
                    elapsed * 1000,
                )
