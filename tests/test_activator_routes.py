"""The activator's routes, against a real ``kgrid serve`` process on a loopback port."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from activator_server import GOOD, Server, build_shelf

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("routes")
    shelf, _ = build_shelf(root)
    with Server(shelf, "--no-watch", log=root / "server.log") as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def test_root_links_every_route_family(client: httpx.Client) -> None:
    links = client.get("/").json()["links"]
    assert {"health", "ready", "metrics", "kos", "openapi", "docs"} <= set(links)


def test_health_and_ready(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "live"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready"
    assert ready["served"] == ["demo-bmi@0.9.0", "demo-bmi@1.0.0", "demo-bmi@1.1.0"]
    assert {(f["id"], f["version"]) for f in ready["failed"]} == {
        ("broken-ko", "1.0.0"),
        ("demo-bmi", "1.3.0"),
        ("demo-bmi", "1.4.0"),
    }


def test_kos_lists_every_version_with_its_status_and_failures_with_reasons(client: httpx.Client) -> None:
    rows = client.get("/kos").json()["kos"]
    status = {(r["id"], r["version"]): r["status"] for r in rows}
    assert status == {
        ("broken-ko", "1.0.0"): "failed",
        ("demo-bmi", "0.5.0"): "retired",
        ("demo-bmi", "0.9.0"): "deprecated",
        ("demo-bmi", "1.0.0"): "active",
        ("demo-bmi", "1.1.0"): "active",
        ("demo-bmi", "1.2.0"): "draft",
        ("demo-bmi", "1.3.0"): "failed",
        ("demo-bmi", "1.4.0"): "failed",
    }
    reasons = {r["version"]: r["reason"] for r in rows if r["status"] == "failed" and r["id"] == "demo-bmi"}
    assert "model.onnx" in reasons["1.3.0"] and "digest" in reasons["1.3.0"]
    assert "test vector" in reasons["1.4.0"]


def test_ko_versions_and_default(client: httpx.Client) -> None:
    body = client.get("/kos/demo-bmi").json()
    assert body["default_version"] == "1.1.0"
    assert len(body["versions"]) == 7


def test_version_metadata_and_service(client: httpx.Client) -> None:
    body = client.get("/kos/demo-bmi/1.0.0").json()
    assert body["metadata"]["dc:version"] == "1.0.0"
    assert body["links"]["calls"] == ["/demo-bmi/1.0.0/bmi"]
    service = client.get("/kos/demo-bmi/1.0.0/service").json()
    assert service["servers"] == [{"url": "/demo-bmi/1.0.0"}]
    assert "/bmi" in service["paths"]


def test_metadata_of_a_failed_version_says_why(client: httpx.Client) -> None:
    response = client.get("/kos/demo-bmi/1.3.0")
    assert response.status_code == 404
    assert "digest" in response.json()["detail"]


def test_combined_openapi_and_docs_page(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"] == "3.1.0"
    assert {"/demo-bmi/1.0.0/bmi", "/demo-bmi/1.1.0/bmi", "/demo-bmi/0.9.0/bmi", "/endpoints/demo-bmi/bmi"} <= set(
        spec["paths"]
    )
    assert "/demo-bmi/1.3.0/bmi" not in spec["paths"]
    page = client.get("/docs")
    assert page.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in page.text and "http://" not in page.text and "https://" not in page.text


@pytest.mark.parametrize(
    ("path", "version"),
    [
        pytest.param("/demo-bmi/1.0.0/bmi", "1.0.0", id="v1-exact"),
        pytest.param("/demo-bmi/1/bmi", "1.1.0", id="v1-major-only"),
        pytest.param("/demo-bmi/1.0/bmi", "1.0.0", id="v1-minor-only"),
        pytest.param("/endpoints/demo-bmi/bmi", "1.1.0", id="v2-latest-active"),
        pytest.param("/endpoints/demo-bmi/bmi?v=1.0.0", "1.0.0", id="v2-pinned"),
        pytest.param("/endpoints/demo-bmi/bmi?v=%5E0.9", "0.9.0", id="v2-range-deprecated"),
    ],
)
def test_call_both_route_styles(client: httpx.Client, path: str, version: str) -> None:
    response = client.post(path, json=GOOD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"]["category"] == "normal"
    assert body["result"]["bmi"] == pytest.approx(70 / 1.75**2)
    info = body["info"]
    assert (info["id"], info["version"], info["endpoint"]) == ("demo-bmi", version, "bmi")
    assert len(info["content_digest"]) == 64
    # A deprecated version still answers, and says so in the result as well as in its headers.
    deprecated = [f"(model): demo-bmi@{version} is deprecated"] if version == "0.9.0" else []
    assert [w[: len(d)] for w, d in zip(info["warnings"], deprecated, strict=False)] == deprecated
    assert len(info["warnings"]) == len(deprecated)
    assert info["request_id"] == response.headers["x-request-id"]


def test_request_id_is_honoured(client: httpx.Client) -> None:
    response = client.post("/endpoints/demo-bmi/bmi", json=GOOD, headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["info"]["request_id"] == "abc-123"


def test_unsafe_request_id_is_replaced(client: httpx.Client) -> None:
    response = client.post("/endpoints/demo-bmi/bmi", json=GOOD, headers={"X-Request-ID": "a b\tc"})
    assert response.headers["x-request-id"] != "a b\tc"
    assert len(response.headers["x-request-id"]) == 32


def test_warnings_are_in_info(client: httpx.Client) -> None:
    body = client.post("/endpoints/demo-bmi/bmi", json={**GOOD, "age": 95}).json()
    assert len(body["info"]["warnings"]) == 1 and body["info"]["warnings"][0].startswith("age:")


def test_minimal_profile_returns_the_bare_result(client: httpx.Client) -> None:
    headers = {"Accept": 'application/json;profile="minimal"'}
    body = client.post("/endpoints/demo-bmi/bmi", json=GOOD, headers=headers).json()
    assert set(body) == {"bmi", "adjusted", "category", "obese"}


def test_batch_is_answered_in_order_with_per_item_errors(client: httpx.Client) -> None:
    items = [GOOD, {**GOOD, "weight": "heavy"}, {**GOOD, "height": 2.0}, 42]
    response = client.post("/demo-bmi/1.0.0/bmi", json=items)
    assert response.status_code == 200
    body = response.json()
    assert [r is None for r in body["result"]] == [False, True, False, True]
    assert body["result"][2]["bmi"] == pytest.approx(70 / 4)
    errors = body["info"]["errors"]
    assert errors[0] is None and errors[2] is None
    assert errors[1] == [{"field": "weight", "message": "must be a number, got 'heavy'"}]
    assert errors[3][0]["field"] == "(body)"
    assert len(body["info"]["warnings"]) == 4


def test_deprecated_version_answers_with_deprecation_header(client: httpx.Client) -> None:
    response = client.post("/demo-bmi/0.9.0/bmi", json=GOOD)
    assert response.status_code == 200
    assert response.headers["deprecation"] == "true"
    assert response.headers["link"] == '</demo-bmi/1.1.0/bmi>; rel="successor-version"'
    assert "deprecation" not in client.post("/demo-bmi/1.1.0/bmi", json=GOOD).headers


def test_retired_version_is_gone_with_its_successor(client: httpx.Client) -> None:
    response = client.post("/demo-bmi/0.5.0/bmi", json=GOOD)
    assert response.status_code == 410
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["successor"] == "demo-bmi@^1.0.0"
    assert body["successor_address"] == "/demo-bmi/1.1.0/bmi"
    assert response.headers["link"] == '</demo-bmi/1.1.0/bmi>; rel="successor-version"'


def test_draft_is_not_served(client: httpx.Client) -> None:
    response = client.post("/demo-bmi/1.2.0/bmi", json=GOOD)
    assert response.status_code == 404
    assert "draft" in response.json()["detail"]


def test_failed_versions_are_not_served_and_ranges_skip_them(client: httpx.Client) -> None:
    response = client.post("/demo-bmi/1.3.0/bmi", json=GOOD)
    assert response.status_code == 404
    assert "not served" in response.json()["detail"]
    assert client.post("/endpoints/demo-bmi/bmi?v=^1", json=GOOD).json()["info"]["version"] == "1.1.0"


def test_metrics_count_calls_per_ko_version_and_endpoint(client: httpx.Client) -> None:
    client.post("/demo-bmi/1.0.0/bmi", json=GOOD)
    client.post("/demo-bmi/1.0.0/bmi", json={"weight": 1})
    text = client.get("/metrics").text
    assert 'kgrid_ko_requests_total{endpoint="bmi",ko="demo-bmi",version="1.0.0"}' in text
    assert 'kgrid_ko_errors_total{endpoint="bmi",ko="demo-bmi",status="422",version="1.0.0"}' in text
    assert 'kgrid_ko_request_duration_seconds_bucket{endpoint="bmi"' in text
    assert "kgrid_kos_failed 3.0" in text


def test_request_ids_are_in_the_log(server: Server, client: httpx.Client) -> None:
    client.post("/endpoints/demo-bmi/bmi", json=GOOD, headers={"X-Request-ID": "find-me-in-the-log"})
    assert server.log is not None
    for _ in range(50):  # the log line is written just after the response
        if "find-me-in-the-log" in server.read_log():
            break
        time.sleep(0.05)
    assert "find-me-in-the-log POST /endpoints/demo-bmi/bmi 200" in server.read_log()


def test_serve_refuses_a_missing_shelf(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from kgrid_py.cli import main; main()", "serve", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no shelf folder" in result.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the docs page's script")
def test_docs_page_prefills_bodies_that_are_valid_calls(client: httpx.Client, tmp_path: Path) -> None:
    page = client.get("/docs").text
    script = page.split("<script>")[1].split("</script>")[0]
    example = script[script.index("function example") : script.index("function el(")]
    (tmp_path / "spec.json").write_text(client.get("/openapi.json").text)
    (tmp_path / "examples.js").write_text(
        example
        + "const spec = JSON.parse(require('fs').readFileSync(process.argv[2]));\n"
        + "const out = {};\n"
        + "for (const [p, item] of Object.entries(spec.paths)) for (const op of Object.values(item))\n"
        + "  if (op.requestBody) out[p] = example(op.requestBody.content['application/json'].schema, spec);\n"
        + "console.log(JSON.stringify(out));\n"
    )
    result = subprocess.run(
        ["node", str(tmp_path / "examples.js"), str(tmp_path / "spec.json")], capture_output=True, text=True, timeout=30
    )
    examples = json.loads(result.stdout)
    assert len(examples) == 4
    for path, body in examples.items():
        assert client.post(path, json=body).status_code == 200, (path, body)
