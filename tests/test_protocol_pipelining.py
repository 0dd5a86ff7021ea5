"""A refusal of a pipelined request (a head over 16 KiB, or one the parser cannot read) must come
after the answer to the request still in flight on that connection, never instead of it.

A real uvicorn server on loopback, with each of the activator's protocols and a handler slow
enough that the pipelined request arrives while the first is being answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest
import uvicorn
from activator_server import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_hardening_connections import _closed_by_server


async def _slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(0.4)
    return PlainTextResponse("slow-ok")


def _received(port: int, second: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(0.1)  # the first request is being answered
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(second)
        received = _closed_by_server(sock, 5)
    assert received is not None, "the server kept the connection open after refusing"
    return received


@pytest.mark.parametrize("protocol", ["GuardedHttpToolsProtocol", "GuardedH11Protocol"])
@pytest.mark.parametrize(
    "second",
    [
        b"GET /slow HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"GET /slow HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n",
    ],
    ids=["head-too-large", "unparseable"],
)
def test_a_pipelined_refusal_follows_the_answer_in_flight(protocol: str, second: bytes) -> None:
    port = free_port()
    app = Starlette(routes=[Route("/slow", _slow)])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=f"activator.protocol:{protocol}", log_level="error", loop="asyncio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        received = _received(port, second)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert received.startswith(b"HTTP/1.1 200 OK"), received[:200]
    assert b"slow-ok" in received
    refusal = received.split(b"slow-ok", 1)[1]
    assert refusal.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), refusal[:200]
