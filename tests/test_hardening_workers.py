"""``kgrid serve --workers 2``: a 201 means every worker serves the new version, each reload runs
once per worker, and ``/metrics`` sums both workers (no counter resets between scrapes)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from activator_server import ADMIN_TOKEN, GOOD, Server, publish
from demo_ko import write_demo_ko

from kgrid_py.curation.archive import pack

PUBLISH_TOKEN = "pub-workers-0123456789-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("workers")
    template = write_demo_ko(root / "template")
    shelf = root / "shelf"
    shelf.mkdir()
    publish(template, shelf, "1.0.0")
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": "alice", "roles": ["publish"], "token": PUBLISH_TOKEN}]}))
    args = ["--workers", "2", "--no-watch", "--tokens", str(tokens)]
    with Server(shelf, *args, log=root / "server.log") as running:
        running.root = root  # type: ignore[attr-defined]
        _wait_for_both_workers(running)
        yield running


def _wait_for_both_workers(server: Server) -> None:
    deadline = time.monotonic() + 60
    while server.read_log().count("loaded (generation") < 2:
        assert time.monotonic() < deadline, "the second worker never loaded the shelf"
        time.sleep(0.1)


def _version_on_a_fresh_connection(url: str) -> str:
    with httpx.Client(timeout=10) as fresh:  # a new connection: either worker may take it
        return fresh.post(f"{url}/endpoints/demo-bmi/bmi", json=GOOD).json()["info"]["version"]


def test_after_a_201_every_call_reaches_the_new_version(server: Server, tmp_path: Path) -> None:
    assert {_version_on_a_fresh_connection(server.url) for _ in range(10)} == {"1.0.0"}
    archive = pack(write_demo_ko(tmp_path / "ko", "1.1.0", "draft"))
    response = httpx.post(
        f"{server.url}/kos",
        content=archive,
        headers={"Authorization": f"Bearer {PUBLISH_TOKEN}", "Content-Type": "application/zip"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    seen = [_version_on_a_fresh_connection(server.url) for _ in range(40)]
    assert set(seen) == {"1.1.0"}, seen


def test_a_reload_runs_once_in_each_worker(server: Server) -> None:
    before = server.read_log().count("loaded (generation")
    reloaded = httpx.post(f"{server.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
    assert reloaded.status_code == 200
    time.sleep(1.5)  # a second reload in the same worker, if any, would show by now
    assert server.read_log().count("loaded (generation") - before == 2


def _count(text: str, route: str) -> float:
    pattern = rf'kgrid_http_requests_total\{{method="POST",route="{re.escape(route)}",status="200"\}} ([0-9.e+]+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_metrics_sum_both_workers(server: Server) -> None:
    route = "/{ko_id}/{version}/{endpoint}"
    with httpx.Client(timeout=10) as first:
        start = _count(first.get(f"{server.url}/metrics").text, route)
    for _ in range(30):
        with httpx.Client(timeout=10) as fresh:
            assert fresh.post(f"{server.url}/demo-bmi/1.0.0/bmi", json=GOOD).status_code == 200
    scraped = []
    for _ in range(10):
        with httpx.Client(timeout=10) as fresh:
            scraped.append(_count(fresh.get(f"{server.url}/metrics").text, route))
    assert scraped == [start + 30] * 10
