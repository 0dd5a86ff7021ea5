"""Hostile requests against a real ``kgrid serve``: each is a clean 4xx or a quiet log line, never a 500.

Every test talks to one server process over loopback; the last one reads its log and checks that
nothing it was sent produced a traceback, an ERROR line or a forged log line.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from activator_server import ADMIN_TOKEN, GOOD, Server, build_shelf
from archives import entries_of, rebuild, with_metadata
from demo_ko import write_demo_ko

from kgrid_py.curation.archive import pack
from kgrid_py.curation.audit import read_audit

JSON = {"Content-Type": "application/json"}
MINIMAL = {**JSON, "Accept": 'application/json;profile="minimal"'}
PUBLISH_TOKEN = "pub-hardening-0123456789-secret"
OIP_GOOD = [
    {"name": "weight", "datatype": "FP64", "shape": [1], "data": [70.0]},
    {"name": "height", "datatype": "FP64", "shape": [1], "data": [1.75]},
    {"name": "sex", "datatype": "BYTES", "shape": [1], "data": ["female"]},
    {"name": "age", "datatype": "INT64", "shape": [1], "data": [40]},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("hardening")
    shelf, _ = build_shelf(root)
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": "alice", "roles": ["publish"], "token": PUBLISH_TOKEN}]}))
    args = ["--no-watch", "--tokens", str(tokens), "--max-batch-rows", "50"]
    with Server(shelf, *args, log=root / "server.log") as running:
        running.shelf = shelf  # type: ignore[attr-defined]
        running.root = root  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


# -- lone surrogates and unhashable values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/demo-bmi/1.0.0/bmi", rb'{"\ud800": 1, "weight": 70}', id="field-name"),
        pytest.param("/endpoints/demo-bmi/bmi", rb'[{"\udfff": 1}]', id="batch-key"),
        pytest.param("/endpoints/demo-bmi/bmi", rb'{"weight": 70, "sex": "\ud800"}', id="field-value"),
        pytest.param(
            "/v2/models/demo-bmi.bmi/infer",
            json.dumps({"inputs": [*OIP_GOOD[:2], {**OIP_GOOD[2], "data": ["\ud800"]}, *OIP_GOOD[3:]]}).encode(),
            id="oip-bytes-value",
        ),
        pytest.param(
            "/v2/models/demo-bmi.bmi/infer",
            json.dumps({"id": "\ud800", "inputs": OIP_GOOD}).encode(),
            id="oip-id",
        ),
        pytest.param(
            "/v2/models/demo-bmi.bmi/infer",
            json.dumps({"inputs": [{**OIP_GOOD[0], "name": "\ud800"}]}).encode(),
            id="oip-name",
        ),
    ],
)
def test_a_lone_surrogate_is_a_400(client: httpx.Client, path: str, body: bytes) -> None:
    problem = _problem(client.post(path, content=body, headers=JSON), 400)
    assert "surrogate" in problem["detail"]


def test_a_surrogate_pair_is_still_text(client: httpx.Client) -> None:
    body = json.dumps({**GOOD, "sex": "\U0001f600"}).encode()  # \ud83d\ude00 on the wire: a real character
    assert b"\\ud83d\\ude00" in body
    problem = _problem(client.post("/demo-bmi/1.0.0/bmi", content=body, headers=JSON), 422)
    assert "\U0001f600" in problem["detail"]


def test_an_invalid_utf8_bytes_tensor_is_a_400(client: httpx.Client) -> None:
    encoded = b"\xed\xa0\x80"  # a surrogate encoded as UTF-8: not UTF-8
    raw = struct.pack("<I", len(encoded)) + encoded
    inputs = [*OIP_GOOD[:2], {**OIP_GOOD[2], "parameters": {"binary_data_size": len(raw)}}, OIP_GOOD[3]]
    del inputs[2]["data"]
    head = json.dumps({"inputs": inputs}).encode()
    response = client.post(
        "/v2/models/demo-bmi.bmi/infer",
        content=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert _problem(response, 400)["error"]


@pytest.mark.parametrize(
    "request_json",
    [
        pytest.param({"inputs": [{**OIP_GOOD[0], "datatype": ["FP64"]}]}, id="datatype-list"),
        pytest.param({"inputs": [{**OIP_GOOD[0], "datatype": {"a": 1}}]}, id="datatype-object"),
        pytest.param({"inputs": [{**OIP_GOOD[0], "name": ["weight"]}]}, id="name-list"),
        pytest.param({"inputs": OIP_GOOD, "outputs": [{"name": ["bmi"]}]}, id="output-name-list"),
        pytest.param({"inputs": OIP_GOOD, "outputs": [{"name": {"bmi": 1}}]}, id="output-name-object"),
    ],
)
def test_unhashable_oip_names_and_datatypes_are_a_400(client: httpx.Client, request_json: dict) -> None:
    assert _problem(client.post("/v2/models/demo-bmi.bmi/infer", json=request_json), 400)["error"]


def test_a_repeated_version_query_is_a_400(client: httpx.Client) -> None:
    problem = _problem(client.post("/endpoints/demo-bmi/bmi?v=1.0.0&v=1.1.0", json=GOOD), 400)
    assert "?v=" in problem["detail"]
    assert client.post("/endpoints/demo-bmi/bmi?v=1.0.0", json=GOOD).json()["info"]["version"] == "1.0.0"


# -- amplification -----------------------------------------------------------------------------------


def test_a_batch_over_the_limit_is_refused_before_scoring(client: httpx.Client) -> None:
    problem = _problem(client.post("/endpoints/demo-bmi/bmi", json=[{}] * 51), 413)
    assert problem["max_batch_rows"] == 50
    assert len(client.post("/endpoints/demo-bmi/bmi", json=[GOOD] * 50).json()["result"]) == 50
    oip = [{**t, "shape": [51], "data": t["data"] * 51} for t in OIP_GOOD]
    assert _problem(client.post("/v2/models/demo-bmi.bmi/infer", json={"inputs": oip}), 413)["max_batch_rows"] == 50


def test_a_megabyte_of_empty_objects_is_answered_in_a_few_hundred_bytes(client: httpx.Client) -> None:
    body = b"[" + b",".join([b"{}"] * 349_000) + b"]"  # just under the 1 MiB body limit
    response = client.post("/endpoints/demo-bmi/bmi", content=body, headers=JSON)
    assert _problem(response, 413) and len(response.content) < 1000


def test_each_bad_row_is_answered_compactly(client: httpx.Client) -> None:
    noisy = {f"unknown_{i}": i for i in range(200)}  # 200 unknown fields, each once named with the inputs
    body = client.post("/endpoints/demo-bmi/bmi", json=[noisy, GOOD]).json()
    row = body["info"]["errors"][0]
    assert len(row) == 6 and row[-1] == {"field": "(more)", "message": "199 more problem(s) not shown"}
    assert len(json.dumps(row)) < 1500
    assert body["result"][1]["bmi"] == pytest.approx(70 / 1.75**2)
    single = _problem(client.post("/demo-bmi/1.0.0/bmi", json=noisy), 422)
    assert len(single["errors"]) <= 51 and len(single["detail"]) < 1500


def test_a_bad_row_in_a_minimal_batch_is_a_problem_object(client: httpx.Client) -> None:
    body = client.post("/endpoints/demo-bmi/bmi", json=[GOOD, {**GOOD, "weight": "heavy"}], headers=MINIMAL).json()
    assert body[0]["bmi"] == pytest.approx(70 / 1.75**2)
    assert body[1]["status"] == 422 and body[1]["type"].endswith("/invalid-input")
    assert body[1]["errors"] == [{"field": "weight", "message": "must be a number, got 'heavy'"}]


# -- the same lifecycle headers on every route family --------------------------------------------------


def test_oip_sends_the_deprecation_headers_of_the_kgrid_routes(client: httpx.Client) -> None:
    kgrid = client.post("/demo-bmi/0.9.0/bmi", json=GOOD)
    oip = client.post("/v2/models/demo-bmi.bmi/versions/0.9.0/infer", json={"inputs": OIP_GOOD})
    assert oip.status_code == 200
    assert oip.headers["deprecation"] == kgrid.headers["deprecation"] == "true"
    assert oip.headers["link"] == '</v2/models/demo-bmi.bmi/versions/1.1.0/infer>; rel="successor-version"'
    assert kgrid.headers["link"] == '</demo-bmi/1.1.0/bmi>; rel="successor-version"'
    metadata = client.get("/v2/models/demo-bmi.bmi/versions/0.9.0")
    assert metadata.headers["deprecation"] == "true"
    current = client.post("/v2/models/demo-bmi.bmi/versions/1.1.0/infer", json={"inputs": OIP_GOOD})
    assert "deprecation" not in current.headers and "link" not in current.headers
    retired = _problem(client.post("/v2/models/demo-bmi.bmi/versions/0.5.0/infer", json={"inputs": OIP_GOOD}), 410)
    assert retired["successor"] == "demo-bmi@^1.0.0"


# -- refusals are audited, and never name server paths -------------------------------------------------


def test_refused_tokens_and_reloads_are_audited(server: Server, client: httpx.Client) -> None:
    audit = server.shelf / ".kgrid" / "audit.jsonl"  # type: ignore[attr-defined]
    before = len(read_audit(audit))
    assert client.post("/kos", content=b"x", headers={"Content-Type": "application/zip"}).status_code == 401
    wrong = {"Authorization": "Bearer not-a-token", "Content-Type": "application/zip"}
    assert client.post("/kos", content=b"x", headers=wrong).status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code in (401, 403)
    assert client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    records = read_audit(audit)[before:]
    refused = [r for r in records if r["outcome"] == "refused"]
    assert [r["http_status"] for r in refused][:2] == [401, 401]
    assert all(r["route"] in ("POST /kos", "POST /admin/reload") for r in refused)
    assert not any("not-a-token" in json.dumps(r) or "nope" in json.dumps(r) for r in records)
    reloads = [r for r in records if r["action"] == "reload"]
    assert len(reloads) == 1 and reloads[0]["actor"] == "admin-token"


def test_a_422_never_names_a_server_path(server: Server, client: httpx.Client, tmp_path: Path) -> None:
    contents = entries_of(pack(write_demo_ko(tmp_path / "ko", "1.0.0", "draft")))  # as rebuild() declares it
    contents = with_metadata(contents, functions="not a list")  # the loader names the file it read
    response = client.post(
        "/kos",
        content=rebuild(contents),
        headers={"Authorization": f"Bearer {PUBLISH_TOKEN}", "Content-Type": "application/zip"},
    )
    assert response.status_code == 422, response.text
    text = response.text
    assert str(server.shelf) not in text and "/.kgrid/" not in text and "staging" not in text  # type: ignore[attr-defined]
    assert "metadata.json" in text


# -- metrics labels are bounded; aborted clients are not errors ---------------------------------------


def test_metrics_labels_stay_bounded_under_random_methods_and_paths(client: httpx.Client) -> None:
    # httptools (the default parser) refuses methods it does not know before the app sees them;
    # the WebDAV ones it parses, and the app must still label them "other".
    webdav = ["PROPFIND", "MKCOL", "LOCK", "UNLOCK", "PROPPATCH", "MOVE", "COPY", "SEARCH"]
    for i in range(40):
        client.request(f"X{i}METHOD", "/health")
        client.request(webdav[i % len(webdav)], "/health")
        client.get(f"/no-such-route-{i}/x/y")
        client.post(f"/kos/demo-bmi/9.9.{i}/status", json={})
    text = client.get("/metrics").text
    methods = set(re.findall(r'kgrid_http_requests_total\{method="([^"]*)"', text))
    routes = set(re.findall(r'kgrid_http_requests_total\{[^}]*route="([^"]*)"', text))
    assert "X1METHOD" not in methods and "PROPFIND" not in methods and "other" in methods
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    assert not any("no-such-route" in r or "9.9." in r for r in routes)


def test_a_client_that_hangs_up_mid_body_is_a_quiet_499(server: Server, client: httpx.Client) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"POST /endpoints/demo-bmi/bmi HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"weight": '
            )
            time.sleep(0.2)
    time.sleep(0.5)
    text = client.get("/metrics").text
    line = 'kgrid_http_requests_total{method="POST",route="/endpoints/{ko_id}/{endpoint}",status="499"}'
    assert f"{line} 3.0" in text
    assert 'route="/endpoints/{ko_id}/{endpoint}",status="500"' not in text


def test_control_characters_never_forge_a_log_line(server: Server, client: httpx.Client) -> None:
    client.get("/nope%0a2099-01-01 00:00:00,000 INFO activator.access: forged GET /admin 200%0d%1b[31m")
    client.request("GET", "/health", headers={"X-Request-ID": "ok"})
    time.sleep(0.3)
    log = server.read_log()
    assert not any(line.startswith("2099-01-01") for line in log.splitlines())
    assert "/nope\\x0a2099-01-01" in log and "\x1b" not in log


def test_the_server_logged_no_traceback_or_error(server: Server) -> None:
    log = server.read_log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
