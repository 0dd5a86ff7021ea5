"""A site's outbound calls to the coordinating activator's mailbox (``/federation/{study}/...``).

The site polls: it fetches the latest plan and posts its message; it never listens. URLs are the
study's base, ``http(s)://host:port/federation/<study>``. Bodies are capped (1 MiB), timeouts bound
every call, and a refusal comes back as :class:`~kgrid_py.learning.plans.FederationError` quoting
the server's problem detail.
"""

from __future__ import annotations

from typing import Any

import httpx

from kgrid_py.learning.plans import MAX_DOCUMENT_BYTES, FederationError, dumps, parse

__all__ = ["fetch_plan", "fetch_status", "post_message"]

TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def _headers(token: str | None) -> dict[str, str]:
    if not token:
        raise FederationError("an HTTP mailbox needs the site's token (--token or KGRID_FEDERATION_TOKEN)")
    return {"Authorization": f"Bearer {token}"}


def _refused(response: httpx.Response, what: str) -> FederationError:
    try:
        detail = response.json().get("detail", response.text[:300])
    except ValueError:
        detail = response.text[:300]
    return FederationError(f"{what}: the coordinator answered {response.status_code}: {detail}")


def fetch_plan(base: str, token: str | None) -> dict[str, Any]:
    """The latest signed plan (not yet verified: the caller checks it with its trust dir)."""
    url = base.rstrip("/") + "/plan"
    try:
        with httpx.stream("GET", url, headers=_headers(token), timeout=TIMEOUT) as response:
            if response.status_code != 200:
                response.read()
                raise _refused(response, f"GET {url}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise FederationError(f"GET {url}: the plan is over {MAX_DOCUMENT_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise FederationError(f"GET {url}: {type(exc).__name__}: {exc}") from None
    return parse(body, url)


def post_message(base: str, token: str | None, document: dict[str, Any]) -> dict[str, Any]:
    """Upload the signed message; the same message twice is accepted (a retried upload)."""
    url = base.rstrip("/") + "/messages"
    headers = {**_headers(token), "Content-Type": "application/json"}
    try:
        response = httpx.post(url, content=dumps(document), headers=headers, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise FederationError(f"POST {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code not in (200, 201):
        raise _refused(response, f"POST {url}")
    return response.json()  # type: ignore[no-any-return]


def fetch_status(base: str, token: str | None) -> dict[str, Any]:
    """The study's round and which sites have answered it."""
    url = base.rstrip("/") + "/status"
    try:
        response = httpx.get(url, headers=_headers(token), timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise FederationError(f"GET {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
        raise _refused(response, f"GET {url}")
    return response.json()  # type: ignore[no-any-return]
