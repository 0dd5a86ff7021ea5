"""Request plumbing the routes share: strict JSON bodies, size limits, responses, the app's state."""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

try:  # a declared dependency; the stdlib encoder remains the fallback for what orjson refuses
    import orjson
except ImportError:  # pragma: no cover - an install without it still answers, more slowly
    orjson = None  # type: ignore[assignment]
from starlette.requests import Request
from starlette.responses import Response

from activator.dispatch import Dispatcher
from activator.metrics import Metrics
from activator.problems import Problem
from activator.registry import Registry
from activator.settings import Settings
from activator.workers import Generations

__all__ = ["State", "encode_json", "json_response", "parse_json", "read_body", "require_json", "state_of"]


@dataclass
class State:
    """What the lifespan builds and every request sees as ``request.state.activator``."""

    settings: Settings
    registry: Registry
    metrics: Metrics
    dispatcher: Dispatcher
    # --workers N: the shared shelf generation, the one this worker serves, and one reload at a time.
    generations: Generations | None = None
    applied: int = 0
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    capture: Any = None  # activator.capture.Capture when --capture is on


def state_of(request: Request) -> State:
    return request.state.activator  # type: ignore[no-any-return]


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (``application/json`` or ``application/*+json``)."""
    content_type = request.headers.get("content-type")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    shown = repr(content_type) if content_type else "none"
    raise Problem(415, f"send the inputs as application/json (the request's Content-Type was {shown})")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) anything over ``limit`` bytes before reading past it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"the body is {declared} bytes; this server takes at most {limit}", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"the body is over {limit} bytes, the most this server takes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (RFC 8259 has no NaN or Infinity); send a number")


def _parse_int(text: str) -> int | float:
    # Integers too big for a double would overflow float() later; as floats they become inf, which
    # input validation reports as not finite (422) instead of crashing.
    return int(text) if len(text) <= 18 else float(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dupes = sorted({k for k, _ in pairs if k in seen or seen.add(k)})  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key(s) {', '.join(map(repr, dupes))}: which value was meant is ambiguous")
    return obj


# A \uD800-\uDFFF escape: JSON allows it, but alone (not as half of a pair) it is no character, and
# every later encode (a response, a log line, a database) would fail on it.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) in parsed JSON holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json(body: bytes) -> Any:
    """Strict JSON (no NaN/Infinity, no duplicate keys, no lone surrogates): a 400 problem naming what is
    wrong, never an exception."""
    if not body.strip():
        raise Problem(400, "the body is empty; send a JSON object of inputs, or an array of them")
    try:
        value = json.loads(
            body.decode("utf-8"), parse_constant=_reject_constant, parse_int=_parse_int, object_pairs_hook=_unique_keys
        )
    except UnicodeDecodeError:
        raise Problem(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise Problem(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise Problem(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise Problem(400, "malformed JSON: nested too deeply") from None
    # Only a body with a surrogate escape can hold one (pairs are joined by json.loads): the walk is
    # skipped on every ordinary request.
    if _SURROGATE_ESCAPE.search(body) and _lone_surrogate(value):
        raise Problem(400, "malformed JSON: a string holds a lone UTF-16 surrogate (\\uD800-\\uDFFF): not text")
    return value


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None, media_type: str = "application/json"
) -> Response:
    """A JSON response; a non-finite number (a model's NaN) becomes null rather than a crash."""
    return Response(encode_json(content), status_code=status, headers=headers, media_type=media_type)


def encode_json(content: Any) -> bytes:
    """Compact UTF-8 JSON. orjson first: its floats are the shortest text that round-trips to the
    same float64 (as the stdlib's; small magnitudes read ``1e-7``, not ``1e-07``), NaN and
    infinity become null (as ``_finite`` does). What it refuses (a key that is not a string, an
    integer past 64 bits, a lone surrogate, an unknown type) takes the stdlib path below."""
    if orjson is not None:
        try:
            return orjson.dumps(content)
        except (TypeError, orjson.JSONEncodeError):
            pass
    try:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_finite(content), ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate that got past parsing: \u escapes are still JSON
        return json.dumps(_finite(content), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
