"""In-process checks of what a real server cannot be made to do on demand: a bug's 500, the dispatcher."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from activator_server import GOOD, free_port
from demo_ko import write_demo_ko
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from activator import Settings, create_app
from activator.dispatch import Dispatcher
from kgrid_py.ko import KnowledgeObject


def test_a_bug_is_a_500_that_reveals_nothing_and_is_logged_with_the_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_demo_ko(tmp_path)

    def broken(self: KnowledgeObject, function: str, inputs: object) -> None:
        raise RuntimeError("secret detail at /srv/internal/path")

    monkeypatch.setattr(KnowledgeObject, "call", broken)
    app = create_app(Settings(shelf=tmp_path, watch=False, verify_vectors=False, access_log=False))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)  # in process, so the monkeypatch applies
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client, caplog.at_level(logging.ERROR, "activator"):
            for _ in range(200):
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            response = client.post("/demo-bmi/1.0.0/bmi", json=GOOD, headers={"X-Request-ID": "bug-1"})
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["request_id"] == "bug-1"
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert any("bug-1" in record.getMessage() and record.exc_info for record in caplog.records)


def test_settings_travel_to_worker_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(shelf=Path("/srv/shelf"), admin_token="t", workers_dir=Path("/tmp/x"), watch=False)
    monkeypatch.setenv("KGRID_ACTIVATOR_SETTINGS", settings.to_env())
    assert Settings.from_env() == settings


def test_dispatcher_coalesces_one_tick_and_keeps_errors_per_call() -> None:
    threads: list[str] = []

    def work(value: int) -> int:
        threads.append(threading.current_thread().name)
        if value == 3:
            raise ValueError("three")
        return value * 10

    async def scenario() -> list[object]:
        dispatcher = Dispatcher(threads=2)
        try:
            return await asyncio.gather(*(dispatcher.run(work, i) for i in range(6)), return_exceptions=True)
        finally:
            dispatcher.close()

    results = asyncio.run(scenario())
    assert results[:3] == [0, 10, 20] and results[4:] == [40, 50]
    assert isinstance(results[3], ValueError)
    assert len(set(threads)) == 1 and threads[0].startswith("kgrid-inference")  # one job ran all six


def test_dispatcher_runs_long_jobs_alone() -> None:
    async def scenario() -> tuple[int, int]:
        dispatcher = Dispatcher(threads=2)
        try:
            return await asyncio.gather(dispatcher.run_alone(sum, [1, 2]), dispatcher.run(len, "abc"))
        finally:
            dispatcher.close()

    assert list(asyncio.run(scenario())) == [3, 3]


def test_routes_added_after_the_app_are_not_shadowed_by_the_ko_route(tmp_path: Path) -> None:
    app = create_app(Settings(shelf=tmp_path, watch=False))

    async def extra(request: Request) -> Response:
        return PlainTextResponse("extra")

    app.router.routes.append(Route("/plugins/{service}/feedback", extra, methods=["POST"]))

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/plugins/kfre/feedback", json={})

    response = asyncio.run(scenario())
    assert response.status_code == 200 and response.text == "extra"
