"""RFC 9457 problem details: every error the activator answers, in one shape.

Handlers raise :class:`Problem`; the exception handlers below turn it, Starlette's own HTTP errors
and any unexpected exception into ``application/problem+json``. An unexpected exception is a bug:
it is logged with the request id, and its body says only that, never what went wrong inside.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from activator.logs import printable
from kgrid_py.errors import FieldError

__all__ = [
    "CLIENT_CLOSED",
    "PROBLEM_TYPE",
    "Problem",
    "exception_handlers",
    "problem_body",
    "problem_response",
    "without_paths",
]

PROBLEM_TYPE = "https://kgrid-py.org/problems/"
MEDIA_TYPE = "application/problem+json"

log = logging.getLogger("activator")

# nginx's "client closed request": not an HTTP status anyone receives, only what logs and metrics say.
CLIENT_CLOSED = 499

_TITLES = {
    400: "Malformed request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    408: "Request timeout",
    410: "Gone",
    413: "Request body too large",
    415: "Unsupported media type",
    431: "Request header fields too large",
    422: "Invalid input",
    500: "Internal server error",
    503: "Service unavailable",
}
_SLUGS = {
    400: "malformed-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    431: "header-fields-too-large",
    406: "not-acceptable",
    408: "request-timeout",
    410: "retired",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "invalid-input",
    500: "internal-error",
    503: "unavailable",
}


# An absolute path (two or more segments, not part of a word such as mL/min): the server's folders
# are nobody's business, so a message keeps only the file's name.
_SERVER_PATH = re.compile(r"(?<![\w.~{}])/(?:[^/\s'\"`:;,()<>]+/)+([^/\s'\"`:;,()<>]*)")


def without_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part (``/srv/shelf/.kgrid/staging/ab/metadata.json``
    becomes ``metadata.json``): for messages built from library errors that name server files."""
    return _SERVER_PATH.sub(r"\1", text)


class Problem(Exception):
    """An error answer: status, a one-sentence detail, and extension members (``available`` ...)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[FieldError] | list[dict[str, str]] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions
        if errors is not None:
            self.extensions["errors"] = [e if isinstance(e, dict) else e.as_dict() for e in errors]

    def body(self, request_id: str | None, instance: str | None) -> dict[str, Any]:
        return problem_body(self.status, self.detail, request_id, instance, **self.extensions)


def problem_body(
    status: int, detail: str, request_id: str | None = None, instance: str | None = None, **extensions: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + _SLUGS.get(status, "error"),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    if request_id is not None:
        body["request_id"] = request_id
    body.update(extensions)
    return body


def problem_response(request: Request, problem: Problem) -> Response:
    request_id = request.scope.get("request_id")
    body = problem.body(request_id, request.url.path)
    try:
        text = json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate echoed from the request: escape it instead of failing
        text = json.dumps(body).encode("ascii")
    return Response(text, status_code=problem.status, headers=problem.headers, media_type=MEDIA_TYPE)


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(request, exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    extensions: dict[str, Any] = {}
    if exc.status_code == 404:
        detail = f"no route {request.url.path}; see GET / for the routes and GET /kos for the KOs"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        allow = next((v for k, v in headers.items() if k.lower() == "allow"), None)
        if allow is not None:
            extensions["allow"] = [m.strip() for m in allow.split(",")]
    else:
        detail = str(exc.detail)
    return problem_response(request, Problem(exc.status_code, detail, headers=headers, **extensions))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    request_id = request.scope.get("request_id")
    method, path = printable(request.method), printable(request.url.path)
    log.error("request %s failed: %s %s", request_id, method, path, exc_info=exc)
    problem = Problem(500, f"an unexpected error occurred; it has been logged under request id {request_id}")
    return problem_response(request, problem)


async def _on_client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before its body arrived: nobody to answer, nothing broken (no ERROR, no 500)."""
    request_id = request.scope.get("request_id")
    log.info("request %s: the client closed the connection before sending its whole body", request_id)
    return Response(status_code=CLIENT_CLOSED)


exception_handlers = {
    Problem: _on_problem,
    ClientDisconnect: _on_client_gone,
    HTTPException: _on_http_exception,
    Exception: _on_unexpected,
}
