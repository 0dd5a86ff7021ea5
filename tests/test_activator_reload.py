"""New KO versions go live without a restart: atomically, under load, and never half-loaded."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from activator_server import ADMIN_TOKEN, GOOD, Server, publish
from demo_ko import write_demo_ko

from kgrid_py.curation.build import seal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from http_load import closed_loop  # the benchmark's raw keep-alive client

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EXPECTED_BMI = 70 / 1.75**2


def _shelf(root: Path) -> tuple[Path, Path]:
    template = write_demo_ko(root / "template")
    shelf = root / "shelf"
    shelf.mkdir()
    publish(template, shelf, "1.0.0")
    return shelf, template


def _version(url: str, **params: str) -> str:
    return httpx.post(f"{url}/endpoints/demo-bmi/bmi", json=GOOD, params=params).json()["info"]["version"]


def _wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_publish_under_load_zero_failures_every_response_names_its_version(tmp_path: Path) -> None:
    shelf, template = _shelf(tmp_path)
    records: list[tuple[float, float, int, str | None]] = []
    reload_window: list[float] = []

    async def check(status: int, body: bytes, started: float, ended: float) -> None:
        version = None
        if status == 200:
            answer = json.loads(body)
            assert answer["result"]["bmi"] == pytest.approx(EXPECTED_BMI)
            version = answer["info"]["version"]
        records.append((started, ended, status, version))
        if len(records) == 2000:  # publish a new version while 32 connections keep calling
            reload_window.append(time.perf_counter())
            await asyncio.to_thread(publish, template, shelf, "1.1.0")
            async with httpx.AsyncClient(base_url=server.url) as admin:
                response = await admin.post("/admin/reload", headers=ADMIN)
            assert response.status_code == 200
            assert "demo-bmi@1.1.0" in response.json()["served"]
            reload_window.append(time.perf_counter())

    with Server(shelf, "--no-watch", "--no-access-log", log=tmp_path / "server.log") as server:
        body = json.dumps(GOOD).encode()
        path = "/endpoints/demo-bmi/bmi"
        outcome = asyncio.run(
            closed_loop("127.0.0.1", server.port, path, body, total=10_000, concurrency=32, check=check)
        )
    assert len(records) == 10_000
    assert outcome.failures == 0
    assert [r for r in records if r[2] != 200] == []
    assert {r[3] for r in records} == {"1.0.0", "1.1.0"}
    reload_started, reload_done = reload_window
    assert all(r[3] == "1.0.0" for r in records if r[1] < reload_started)
    assert all(r[3] == "1.1.0" for r in records if r[0] > reload_done)
    assert outcome.seconds < 60, f"load took {outcome.seconds:.1f} s"


def test_a_batch_in_flight_finishes_on_the_version_it_started_on(tmp_path: Path) -> None:
    shelf, template = _shelf(tmp_path)
    batch = [GOOD] * 20_000
    args = ("--no-watch", "--max-body-bytes", str(8 << 20), "--max-batch-rows", "20000")
    with Server(shelf, *args, log=tmp_path / "server.log") as server:

        async def scenario() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                in_flight = asyncio.create_task(client.post("/endpoints/demo-bmi/bmi", json=batch))
                await asyncio.sleep(0.3)  # the batch is being scored
                await asyncio.to_thread(publish, template, shelf, "1.1.0")
                reloaded = await client.post("/admin/reload", headers=ADMIN)
                return await in_flight, reloaded

        answer, reloaded = asyncio.run(scenario())
        assert reloaded.status_code == 200
        body = answer.json()
        assert body["info"]["version"] == "1.0.0"
        assert len(body["result"]) == 20_000 and all(r is not None for r in body["result"])
        assert _version(server.url) == "1.1.0"


def test_watching_picks_up_new_broken_and_changed_versions(tmp_path: Path) -> None:
    shelf, template = _shelf(tmp_path)
    with Server(shelf, "--watch-interval", "0.2", log=tmp_path / "server.log") as server:
        assert _version(server.url) == "1.0.0"
        publish(template, shelf, "1.1.0")
        _wait_for(lambda: _version(server.url) == "1.1.0")

        # A KO that fails its integrity check is listed as failed; the others keep serving.
        broken = shelf / "_staging"
        shutil.copytree(shelf / "demo-bmi" / "1.1.0", broken)
        raw = json.loads((broken / "metadata.json").read_text())
        raw.update({"@id": "demo-bmi/1.2.0", "dc:version": "1.2.0"})
        (broken / "metadata.json").write_text(json.dumps(raw))
        seal(broken)
        (broken / "README.md").write_text("changed after sealing\n")
        broken.rename(shelf / "demo-bmi" / "1.2.0")

        def failed() -> list[dict]:
            rows = httpx.get(f"{server.url}/kos").json()["kos"]
            return [r for r in rows if r["status"] == "failed"]

        _wait_for(lambda: [r["version"] for r in failed()] == ["1.2.0"])
        assert "README.md" in failed()[0]["reason"]
        assert _version(server.url) == "1.1.0"

        # Deprecating 1.1.0 in place: the default goes back to 1.0.0, and 1.1.0 warns.
        target = shelf / "demo-bmi" / "1.1.0"
        raw = json.loads((target / "metadata.json").read_text())
        raw["status"] = "deprecated"
        (target / "metadata.json").write_text(json.dumps(raw))
        _wait_for(lambda: _version(server.url) == "1.0.0")
        pinned = httpx.post(f"{server.url}/demo-bmi/1.1.0/bmi", json=GOOD)
        assert pinned.headers["deprecation"] == "true"


@pytest.mark.parametrize("workers", [2])
def test_admin_reload_reaches_every_worker(tmp_path: Path, workers: int) -> None:
    shelf, template = _shelf(tmp_path)
    args = ("--no-watch", "--workers", str(workers), "--watch-interval", "0.2")
    with Server(shelf, *args, log=tmp_path / "server.log") as server:
        publish(template, shelf, "1.1.0")
        assert httpx.post(f"{server.url}/admin/reload", headers=ADMIN).status_code == 200
        time.sleep(1.0)  # the other worker sees the reload signal on its next look
        seen = set()
        for _ in range(30):
            with httpx.Client() as fresh:  # a new connection each time, so both workers answer
                seen.add(fresh.post(f"{server.url}/endpoints/demo-bmi/bmi", json=GOOD).json()["info"]["version"])
        assert seen == {"1.1.0"}
