"""uvicorn's h11 protocol with the deadlines and the connection cap it lacks.

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
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from activator.logs import RateLimited
from activator.settings import Settings

__all__ = ["GuardedH11Protocol"]

log = logging.getLogger("activator")
_rate_limited = RateLimited(log, interval=10.0)


@functools.cache
def _settings() -> Settings:
    return Settings.from_env()


class GuardedH11Protocol(H11Protocol):
    """An ``H11Protocol`` with a header deadline, a stalled-write deadline and a connection cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = _settings()
        self.header_timeout = settings.header_timeout
        self.write_timeout = settings.body_timeout
        self.max_connections = settings.limit_concurrency
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

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

    # -- deadlines ---------------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _headers_seen(self) -> None:
        # Past IDLE, h11 has parsed the request line and headers: the body has its own deadline.
        if self._header_timer is not None and self.conn.their_state is not h11.IDLE:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
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
