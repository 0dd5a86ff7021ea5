"""Capture data out and old data gone: ``kgrid capture export/prune`` and the admin HTTP routes.

A real ``kgrid serve --capture`` with role tokens (SQLite and a real PostgreSQL); the export is
read back with pyarrow and compared, value by value, with the answers the server gave.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import httpx
import pyarrow.parquet as pq
from activator_server import GOOD, Server, build_shelf
from click.testing import CliRunner
from pg import capture_url, pg_url  # noqa: F401 - fixtures

from kgrid_py.cli import cli
from kgrid_py.curation.tokens import hash_token
from kgrid_py.learning.store import CaptureStore

ADMIN, PUBLISHER = "admin-token-0123456789abcdef", "publish-token-0123456789abcdef"


def _serve(tmp_path: Path, capture: str) -> Server:
    shelf, _ = build_shelf(tmp_path)
    tokens = tmp_path / "tokens.json"
    entries = [
        {"name": "ops", "roles": ["admin"], "sha256": hash_token(ADMIN)},
        {"name": "alice", "roles": ["publish"], "sha256": hash_token(PUBLISHER)},
    ]
    tokens.write_text(json.dumps({"tokens": entries}))
    args = ["--no-watch", "--no-access-log", "--tokens", str(tokens), "--capture", capture, "--site", "north"]
    server = Server(shelf, *args, log=tmp_path / "server.log")
    server.wait_ready()
    return server


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_http_export_and_prune_need_the_admin_role(tmp_path: Path, capture_url: str) -> None:  # noqa: F811
    server = _serve(tmp_path, capture_url)
    try:
        answers = [
            httpx.post(f"{server.url}/endpoints/demo-bmi/bmi", json={**GOOD, "weight": 60 + i}).json() for i in range(3)
        ]
        refused = httpx.post(f"{server.url}/endpoints/demo-bmi/bmi", json={**GOOD, "sex": "x"})
        export = f"{server.url}/capture/export"
        denied = [
            httpx.get(export).status_code,
            httpx.get(export, headers=_auth("nobody-issued-this-token")).status_code,
            httpx.get(export, headers=_auth(PUBLISHER)).status_code,
            httpx.post(f"{server.url}/capture/prune", json={"before": "2100-01-01"}).status_code,
            httpx.post(
                f"{server.url}/capture/prune", json={"before": "2100-01-01"}, headers=_auth(PUBLISHER)
            ).status_code,
        ]
        full = httpx.get(export, headers=_auth(ADMIN))
        bad_date = httpx.get(export, params={"since": "yesterday"}, headers=_auth(ADMIN))
        future = httpx.get(export, params={"since": "2100-01-01"}, headers=_auth(ADMIN))
        now = dt.datetime.now(dt.UTC).isoformat()
        pruned = httpx.post(f"{server.url}/capture/prune", json={"before": now}, headers=_auth(ADMIN))
        after = httpx.get(export, headers=_auth(ADMIN))
    finally:
        server.stop()
    assert denied == [401, 401, 403, 401, 403]
    assert refused.status_code == 422 and full.status_code == 200, full.text
    assert full.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(full.content))
    assert table.num_rows == 4 and full.headers["x-capture-rows"] == "4"
    rows = table.to_pylist()
    assert [r["input.weight"] for r in rows] == [60.0, 61.0, 62.0, 70.0]
    assert [r["output.bmi"] for r in rows[:3]] == [a["result"]["bmi"] for a in answers]
    assert rows[3]["status"] == "refused" and rows[3]["output.bmi"] is None and "sex" in rows[3]["error"]
    assert {r["site"] for r in rows} == {"north"} and rows[0]["time"].tzinfo is not None
    assert bad_date.status_code == 400 and "since" in bad_date.json()["detail"]
    assert future.status_code == 200 and pq.read_table(io.BytesIO(future.content)).num_rows == 0
    assert pruned.status_code == 200 and pruned.json()["deleted"] == 4
    assert pq.read_table(io.BytesIO(after.content)).num_rows == 0


def test_cli_export_matches_the_store_and_prune_deletes_before(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    server = _serve(tmp_path, url)
    try:
        for weight in (50, 80):
            assert httpx.post(f"{server.url}/demo-bmi/1.0.0/bmi", json={**GOOD, "weight": weight}).status_code == 200
    finally:
        server.stop()
    runner = CliRunner()
    out = tmp_path / "calls.parquet"
    done = runner.invoke(cli, ["capture", "export", "--store", url, "--ko", "demo-bmi", "--out", str(out)])
    assert done.exit_code == 0, done.output
    stored = CaptureStore.open(url).calls_table().to_pylist()
    exported = pq.read_table(out).to_pylist()
    assert [r["id"] for r in exported] == [r["id"] for r in stored]
    for row, record in zip(exported, stored, strict=True):
        for name, value in json.loads(record["outputs"]).items():
            assert row[f"output.{name}"] == value
        for name, value in json.loads(record["inputs_used"]).items():
            assert row[f"used.{name}"] == value
    other = runner.invoke(
        cli, ["capture", "export", "--store", url, "--ko", "nope", "--out", str(tmp_path / "n.parquet")]
    )
    assert other.exit_code == 0 and pq.read_table(tmp_path / "n.parquet").num_rows == 0
    bad = runner.invoke(cli, ["capture", "prune", "--store", url, "--before", "2026-02-30"])
    assert bad.exit_code == 2 and "is not a date" in bad.output
    kept = runner.invoke(cli, ["capture", "prune", "--store", url, "--before", "2000-01-01"])
    assert kept.exit_code == 0 and "0 calls" in kept.output
    gone = runner.invoke(cli, ["capture", "prune", "--store", url, "--before", "2100-01-01"])
    assert gone.exit_code == 0 and "2 calls" in gone.output and CaptureStore.open(url).count_calls() == 0
