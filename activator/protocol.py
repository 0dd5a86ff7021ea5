"""uvicorn's HTTP protocols (httptools and h11) with the deadlines and the limits they lack.

uvicorn times out idle keep-alive connections only after a first response, and never a client that
connects and sends nothing, trickles its headers, or stops reading the answer: each such socket
holds a file descriptor for ever, and enough of them exhaust the process. This protocol closes a
connection that has not sent a request's headers within ``header_timeout`` seconds (from
connecting, or from the end of the previous response), aborts one that has not read a paused
response within ``body_timeout`` seconds, and closes a connection at once when the worker already
holds ``limit_concurrency`` of them. The body's own deadline is the middleware's
(:mod:`activator.middleware`), where a 408 can still be answered. Each kind of closing is logged
at most once per interval, with a count.

uvicorn builds one protocol per connection from its ``Config``; the limits come from the
activator's settings in the environment (``KGRID_ACTIVATOR_SETTINGS``), read once per process.

The two twins share :class:`_Guards` and differ only in how each parser says that a request's
head is complete. ``httptools`` (llhttp, in C) parses about twice as fast as the pure-Python h11,
and it is the default where it installs; but unlike h11 it puts no bound on a request's head, so
:class:`GuardedHttpToolsProtocol` counts the head's bytes itself and answers 431 past
``MAX_HEAD_BYTES`` (h11's own bound, 16 KiB, the same on both).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency, but not on every platform
    HttpToolsProtocol = None  # type: ignore[assignment, misc]

from activator.logs import RateLimited
from activator.problems import MEDIA_TYPE, problem_body
from activator.settings import Settings

__all__ = ["MAX_HEAD_BYTES", "GuardedH11Protocol", "GuardedHttpToolsProtocol", "protocol_path"]

MAX_HEAD_BYTES = 16 * 1024  # h11's default max_incomplete_event_size, which uvicorn keeps

log = logging.getLogger("activator")
_rate_limited = RateLimited(log, interval=10.0)


@functools.cache
def _settings() -> Settings:
    return Settings.from_env()


class _Guards:
    """A header deadline, a stalled-write deadline and a connection cap, for either parser's protocol.

    A subclass says whether a request's head is still awaited (:meth:`_awaiting_head`)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    cycle: Any  # the request being answered (both parsers' protocols keep one), or None
    flow: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = _settings()
        self.header_timeout = settings.header_timeout
        self.write_timeout = settings.body_timeout
        self.max_connections = settings.limit_concurrency
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._pending_refusal: tuple[int, str, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # Closing now frees the descriptor at once; a 503 would need the request read first.
            _rate_limited(
                "over-limit",
                logging.WARNING,
                "closed a new connection: this worker already holds %d (--limit-concurrency)",
                self.max_connections,
            )
            transport.close()
            return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._headers_seen()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        pending, self._pending_refusal = self._pending_refusal, None
        if pending is not None and not self.transport.is_closing():
            self._send_refusal(*pending)
            return
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers are due too
            self._headers_seen()  # unless a pipelined one was already waiting

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._write_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout, self._on_write_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def send_400_response(self, msg: str) -> None:
        """A request the parser cannot read: answered as problem+json like every other error, then closed."""
        self._refuse(400, "Bad Request", f"the request could not be parsed as HTTP/1.1 ({msg.rstrip('.')})")

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        """Answer ``status`` and close; while an earlier pipelined request is still being answered,
        stop reading and answer after it, so its client gets its own answer first."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not self.transport.is_closing():
            self._pending_refusal = (status, reason, detail)
            self.flow.pause_reading()
            return
        self._send_refusal(status, reason, detail)

    def _send_refusal(self, status: int, reason: str, detail: str) -> None:
        body = json.dumps(problem_body(status, detail)).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: {MEDIA_TYPE}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

    # -- deadlines ---------------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _awaiting_head(self) -> bool:
        raise NotImplementedError

    def _headers_seen(self) -> None:
        # Once the request line and headers are parsed, the body has its own deadline.
        if self._header_timer is not None and not self._awaiting_head():
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_head():
            return
        _rate_limited(
            "header-timeout",
            logging.INFO,
            "closed a connection that sent no complete request headers within %g s (--header-timeout)",
            self.header_timeout,
        )
        self.transport.close()

    def _on_write_timeout(self) -> None:
        self._write_timer = None
        if self.transport.is_closing():
            return
        _rate_limited(
            "write-timeout",
            logging.INFO,
            "aborted a connection that read none of its response for %g s (--body-timeout)",
            self.write_timeout,
        )
        self.transport.abort()


class GuardedH11Protocol(_Guards, H11Protocol):
    """uvicorn's pure-Python h11 protocol with the guards: ``kgrid serve --http h11``."""

    def _awaiting_head(self) -> bool:
        # h11 stays IDLE until it has parsed a whole request line and headers.
        return self.conn.their_state is h11.IDLE


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_Guards, HttpToolsProtocol):
        """uvicorn's httptools protocol with the guards and a bound on a request's head (431 past it)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # The parser's own state, as h11 keeps it: between messages, in a head, or past it (a
            # body may still be arriving after an early answer such as a 413, and a pipelined
            # head may be parsed before the previous answer is sent).
            self._message_open = False
            self._head_done = False
            self._head_bytes = 0

        def _awaiting_head(self) -> bool:
            return not (self._message_open and self._head_done)

        def on_message_begin(self) -> None:
            self._message_open, self._head_done = True, False
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head_done = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._message_open = False
            self._head_bytes = 0  # the next head is counted from here
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if self._awaiting_head():
                self._head_bytes += len(data)  # an upper bound: the chunk may carry body bytes too
            super().data_received(data)
            if (
                self._awaiting_head()
                and self._head_bytes > MAX_HEAD_BYTES
                and self._pending_refusal is None
                and not self.transport.is_closing()
            ):
                _rate_limited(
                    "head-too-large",
                    logging.INFO,
                    "refused a request whose line and headers passed %d bytes",
                    MAX_HEAD_BYTES,
                )
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    f"the request line and headers passed {MAX_HEAD_BYTES} bytes",
                )

else:  # pragma: no cover
    GuardedHttpToolsProtocol = None  # type: ignore[assignment, misc]


def protocol_path(choice: str) -> str:
    """The uvicorn ``http=`` setting for ``kgrid serve --http`` (auto: httptools where it installs)."""
    if choice == "h11" or (choice == "auto" and GuardedHttpToolsProtocol is None):
        return "activator.protocol:GuardedH11Protocol"
    if GuardedHttpToolsProtocol is None:
        raise RuntimeError("--http httptools: the httptools package is not installed")
    return "activator.protocol:GuardedHttpToolsProtocol"
