"""The one middleware: a request id, an access-log line and HTTP metrics for every request.

Pure ASGI (no ``BaseHTTPMiddleware``), because it sits on the latency path of every call.
``X-Request-ID`` is honoured when it is a sane token and generated otherwise; it is echoed in the
response, put in ``info`` and in problem bodies, and starts every log line about the request.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activator.metrics import Metrics

__all__ = ["RequestContext"]

access = logging.getLogger("activator.access")
_SANE_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "(unmatched)")
            self.metrics.observe_http(scope["method"], route, status, elapsed)
            if self.access_log:
                access.info("%s %s %s %d %.2fms", request_id, scope["method"], scope["path"], status, elapsed * 1000)
