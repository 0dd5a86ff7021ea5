"""RFC 9457 problem details: every error the activator answers, in one shape.

Handlers raise :class:`Problem`; the exception handlers below turn it, Starlette's own HTTP errors
and any unexpected exception into ``application/problem+json``. An unexpected exception is a bug:
it is logged with the request id, and its body says only that, never what went wrong inside.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from kgrid_py.errors import FieldError

__all__ = ["PROBLEM_TYPE", "Problem", "exception_handlers", "problem_response"]

PROBLEM_TYPE = "https://kgrid-py.org/problems/"
MEDIA_TYPE = "application/problem+json"

log = logging.getLogger("activator")

_TITLES = {
    400: "Malformed request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    410: "Gone",
    413: "Request body too large",
    415: "Unsupported media type",
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
    406: "not-acceptable",
    410: "retired",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "invalid-input",
    500: "internal-error",
    503: "unavailable",
}


class Problem(Exception):
    """An error answer: status, a one-sentence detail, and extension members (``available`` ...)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[FieldError] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions
        if errors is not None:
            self.extensions["errors"] = [e.as_dict() for e in errors]

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
    return Response(
        json.dumps(body, ensure_ascii=False), status_code=problem.status, headers=problem.headers, media_type=MEDIA_TYPE
    )


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
    log.error("request %s failed: %s %s", request_id, request.method, request.url.path, exc_info=exc)
    problem = Problem(500, f"an unexpected error occurred; it has been logged under request id {request_id}")
    return problem_response(request, problem)


exception_handlers = {
    Problem: _on_problem,
    HTTPException: _on_http_exception,
    Exception: _on_unexpected,
}
