"""kgrid serve --capture: every answer has its committed record, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
from pathlib import Path

import httpx
import pytest
from activator_server import GOOD, Server, build_shelf
from pg import capture_url, pg_url  # noqa: F401 - fixtures

from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer

SECRET = secrets.token_hex(32)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "subject.secret"
    path.write_text(SECRET + "\n")
    return path


def _serve(tmp_path: Path, *args: str) -> Server:
    shelf, _ = build_shelf(tmp_path)
    server = Server(shelf, "--no-watch", "--no-access-log", "--site", "north", *args, log=tmp_path / "server.log")
    server.wait_ready()
    return server


def test_each_route_records_its_calls(tmp_path: Path, capture_url: str, secret_file: Path) -> None:  # noqa: F811
    server = _serve(tmp_path, "--capture", capture_url, "--subject-secret-file", str(secret_file))
    try:
        v1 = httpx.post(f"{server.url}/demo-bmi/1.0.0/bmi", json=GOOD, headers={"X-Subject-Id": "patient-9"})
        v2 = httpx.post(f"{server.url}/endpoints/demo-bmi/bmi", json=GOOD)
        bad = httpx.post(f"{server.url}/endpoints/demo-bmi/bmi", json={**GOOD, "weight": -3})
        batch = httpx.post(f"{server.url}/demo-bmi/1.0.0/bmi", json=[GOOD, {**GOOD, "height": "x"}])
        refused_subject = httpx.post(f"{server.url}/endpoints/demo-bmi/bmi", json=[GOOD], headers={"X-Subject-Id": "p"})
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    counted = dict(
        line.split(" ", 1) for line in metrics.splitlines() if line.startswith("kgrid_capture_") and "_total " in line
    )
    # Each request's records are committed before it is answered: 5 records, in 1 to 4 group commits.
    assert float(counted["kgrid_capture_records_total"]) == 5
    assert 1 <= float(counted["kgrid_capture_commits_total"]) <= 4
    assert (v1.status_code, v2.status_code, bad.status_code, batch.status_code) == (200, 200, 422, 200)
    assert refused_subject.status_code == 400
    rows = CaptureStore.open(capture_url).calls_table().to_pylist()
    assert [(r["channel"], r["status"]) for r in rows] == [
        ("kgrid-1", "ok"),
        ("kgrid-2", "ok"),
        ("kgrid-2", "refused"),
        ("kgrid-1", "ok"),
        ("kgrid-1", "refused"),
    ]
    assert {r["site"] for r in rows} == {"north"} and {r["caller"] for r in rows} == {"anonymous"}
    assert rows[0]["subject_key"] == SubjectKeyer(SECRET).key("patient-9")
    assert "patient-9" not in json.dumps(rows) and all(r["subject_key"] is None for r in rows[1:])
    assert json.loads(rows[0]["outputs"]) == v1.json()["result"]
    assert json.loads(rows[0]["inputs_received"]) == GOOD
    assert json.loads(rows[3]["outputs"]) == batch.json()["result"][0]
    assert "weight" in rows[2]["error"]


def test_fail_closed_answers_503_when_the_store_is_gone(tmp_path: Path, capture_url: str) -> None:  # noqa: F811
    server = _serve(tmp_path, "--capture", capture_url)
    try:
        assert httpx.post(f"{server.url}/endpoints/demo-bmi/bmi", json=GOOD).status_code == 200
        store = CaptureStore.open(capture_url)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE calls")
        answer = httpx.post(f"{server.url}/endpoints/demo-bmi/bmi", json=GOOD)
    finally:
        server.stop()
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "audit record was not stored" in answer.json()["detail"]
    assert "result" not in answer.json()


def test_best_effort_serves_and_counts_lost_records(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    server = _serve(tmp_path, "--capture", url, "--capture-policy", "best-effort")
    try:
        with CaptureStore.open(url).engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE calls")
        answers = [httpx.post(f"{server.url}/endpoints/demo-bmi/bmi", json=GOOD).status_code for _ in range(3)]
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    assert answers == [200, 200, 200]
    lost = [line for line in metrics.splitlines() if line.startswith("kgrid_capture_lost_records_total")]
    assert lost and float(lost[0].split()[-1]) == 3.0


def test_capture_alone_uses_the_shelf_store_and_refuses_a_bad_url(tmp_path: Path) -> None:
    server = _serve(tmp_path, "--capture")
    try:
        assert httpx.post(f"{server.url}/endpoints/demo-bmi/bmi", json=GOOD).status_code == 200
    finally:
        server.stop()
    shelf = tmp_path / "shelf"
    store = next(shelf.rglob("capture.sqlite3"))
    assert store.parent.name == ".kgrid" and CaptureStore.open(store).count_calls() == 1
    bad = Server(shelf, "--capture", "mysql://nope/x", log=tmp_path / "bad.log")
    assert bad.process.wait(timeout=60) != 0
    assert "capture store URL" in bad.read_log()


def test_kill_9_under_load_every_answer_has_its_record(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    server = _serve(tmp_path, "--capture", url)
    answered: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(offset: int) -> None:
        with httpx.Client(timeout=5) as http:
            for i in range(100_000):
                if stop.is_set():
                    return
                weight = 60 + offset + i / 10_000  # each request's own input, to find its record by
                try:
                    reply = http.post(f"{server.url}/endpoints/demo-bmi/bmi", json={**GOOD, "weight": weight})
                except httpx.HTTPError:
                    return
                if reply.status_code == 200:
                    with lock:
                        answered.append(weight)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    while len(answered) < 300:
        threading.Event().wait(0.05)
    os.kill(server.process.pid, signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    server.process.wait()
    server.stop()
    rows = CaptureStore.open(url).calls_table(columns=["inputs_received"]).column("inputs_received").to_pylist()
    stored = {json.loads(r)["weight"] for r in rows}
    # Every 200 a client saw has its record; a record may exist for an answer the kill cut off.
    assert len(answered) >= 300
    assert set(answered) <= stored, f"{len(set(answered) - stored)} answers without a record"
