"""Bad requests get RFC 9457 problems with the right status, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from activator_server import ADMIN_TOKEN, GOOD, Server, build_shelf

PROBLEM = "application/problem+json"
JSON = {"Content-Type": "application/json"}
LIMIT = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("errors")
    shelf, _ = build_shelf(root)
    with Server(shelf, "--no-watch", "--max-body-bytes", str(LIMIT), log=root / "server.log") as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def _problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://kgrid-py.org/problems/")
    assert body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(b"{", "malformed JSON", id="truncated"),
        pytest.param(b"{'weight': 70}", "malformed JSON", id="single-quotes"),
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b'{"weight": NaN}', "NaN is not valid JSON", id="nan-literal"),
        pytest.param(b'{"weight": Infinity}', "Infinity is not valid JSON", id="infinity-literal"),
        pytest.param(b"\xff\xfe{}", "UTF-8", id="not-utf8"),
        pytest.param(b"[" * 2000 + b"]" * 2000, "nested too deeply", id="deep-nesting"),
    ],
)
def test_malformed_json_is_400(client: httpx.Client, body: bytes, fragment: str) -> None:
    assert fragment in _problem(client.post("/endpoints/demo-bmi/bmi", content=body, headers=JSON), 400)["detail"]


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"],
)
def test_wrong_content_type_is_415(client: httpx.Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/endpoints/demo-bmi/bmi", content=b'{"weight": 70}', headers=headers)
    _problem(response, 415)


def test_json_suffix_media_types_are_accepted(client: httpx.Client) -> None:
    response = client.post("/endpoints/demo-bmi/bmi", json=GOOD, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 200


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    big = b'{"weight": 70, "pad": "' + b"x" * LIMIT + b'"}'
    assert _problem(client.post("/endpoints/demo-bmi/bmi", content=big, headers=JSON), 413)["limit"] == LIMIT


def test_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    _problem(client.post("/endpoints/demo-bmi/bmi", content=chunks(), headers=JSON), 413)


@pytest.mark.parametrize(
    ("inputs", "fields"),
    [
        pytest.param({**GOOD, "weight": "70"}, ["weight"], id="string-for-number"),
        pytest.param({**GOOD, "weight": True}, ["weight"], id="bool-for-number"),
        pytest.param({**GOOD, "age": 40.5}, ["age"], id="fraction-for-integer"),
        pytest.param({**GOOD, "sex": "other"}, ["sex"], id="unknown-enum"),
        pytest.param({**GOOD, "smoker": "yes"}, ["smoker"], id="string-for-boolean"),
        pytest.param({**GOOD, "weight": 10**400}, ["weight"], id="huge-integer"),
        pytest.param({**GOOD, "weight": {"value": 70, "unit": "stone-ish"}}, ["weight"], id="unknown-unit"),
        pytest.param({**GOOD, "weight": 0}, ["weight"], id="outside-hard-bounds"),
        pytest.param({**GOOD, "race": "x"}, ["race"], id="removed-input"),
        pytest.param({**GOOD, "colour": "x"}, ["colour"], id="unknown-input"),
        pytest.param({"weight": 70}, ["height", "sex", "age"], id="missing-required"),
        pytest.param({**GOOD, "smoker": True, "age": 19}, ["age"], id="constraint"),
        pytest.param(42, ["(body)"], id="number-body"),
        pytest.param("text", ["(body)"], id="string-body"),
        pytest.param(None, ["(body)"], id="null-body"),
        pytest.param(
            b'{"weight": 1e400, "height": 1.75, "sex": "male", "age": 40}', ["weight"], id="overflowing-float"
        ),
    ],
)
def test_invalid_input_is_422_with_one_entry_per_field(client: httpx.Client, inputs: object, fields: list) -> None:
    content = inputs if isinstance(inputs, bytes) else json.dumps(inputs).encode()
    body = _problem(client.post("/demo-bmi/1.0.0/bmi", content=content, headers=JSON), 422)
    assert [e["field"] for e in body["errors"]] == fields
    assert all(e["message"] for e in body["errors"])


def test_mixed_batch_answers_each_item(client: httpx.Client) -> None:
    good = json.dumps(GOOD)
    items = f'[{good}, {{"weight": "NaN"}}, {{"weight": 1e400, "height": 1.75}}, [1, 2], {good}]'
    body = client.post("/endpoints/demo-bmi/bmi", content=items, headers=JSON).json()
    assert [r is not None for r in body["result"]] == [True, False, False, False, True]
    assert [e is None for e in body["info"]["errors"]] == [True, False, False, False, True]


def test_empty_batch_is_an_empty_answer(client: httpx.Client) -> None:
    assert client.post("/endpoints/demo-bmi/bmi", json=[]).json()["result"] == []


@pytest.mark.parametrize(
    ("path", "available"),
    [
        pytest.param("/nope/1.0.0/bmi", ["broken-ko", "demo-bmi"], id="unknown-ko-v1"),
        pytest.param("/endpoints/nope/bmi", ["broken-ko", "demo-bmi"], id="unknown-ko-v2"),
        pytest.param("/Not_An_Id/1/bmi", ["broken-ko", "demo-bmi"], id="invalid-id"),
        pytest.param("/demo-bmi/7.0.0/bmi", None, id="unknown-version"),
        pytest.param("/demo-bmi/7/bmi", None, id="unknown-major"),
        pytest.param("/demo-bmi/banana/bmi", None, id="not-a-version"),
        pytest.param("/demo-bmi/1.0.0/bmx", ["bmi"], id="unknown-endpoint-v1"),
        pytest.param("/endpoints/demo-bmi/bmx", ["bmi"], id="unknown-endpoint-v2"),
    ],
)
def test_unknown_ko_version_or_endpoint_is_404_with_what_exists(
    client: httpx.Client, path: str, available: list[str] | None
) -> None:
    body = _problem(client.post(path, json=GOOD), 404)
    if available is not None:
        assert body["available"] == available
    else:
        assert "1.0.0 (active)" in body["available"] and "0.9.0 (deprecated)" in body["available"]


def test_bad_version_query_is_400(client: httpx.Client) -> None:
    _problem(client.post("/endpoints/demo-bmi/bmi?v=not a range!", json=GOOD), 400)


def test_unknown_route_is_404_problem(client: httpx.Client) -> None:
    _problem(client.get("/no/such/route/here"), 404)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        pytest.param("GET", "/demo-bmi/1.0.0/bmi", ["POST"], id="get-a-call"),
        pytest.param("DELETE", "/kos", ["GET", "HEAD"], id="delete-kos"),
        pytest.param("PUT", "/endpoints/demo-bmi/bmi", ["POST"], id="put-a-call"),
        pytest.param("POST", "/kos/demo-bmi/1.0.0", ["GET", "HEAD"], id="post-metadata"),
        pytest.param("GET", "/admin/reload", ["POST"], id="get-admin"),
    ],
)
def test_wrong_method_is_405(client: httpx.Client, method: str, path: str, allow: list[str]) -> None:
    response = client.request(method, path, json=GOOD)
    _problem(response, 405)
    assert set(response.headers["allow"].split(", ")) == set(allow)
    assert set(response.json()["allow"]) == set(allow)  # the body names them too, for problem+json clients


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="no-token"),
        pytest.param({"Authorization": "Bearer wrong"}, 401, id="wrong-token"),
        pytest.param({"Authorization": f"Basic {ADMIN_TOKEN}"}, 401, id="wrong-scheme"),
    ],
)
def test_admin_reload_needs_the_token(client: httpx.Client, headers: dict, status: int) -> None:
    response = client.post("/admin/reload", headers=headers)
    _problem(response, status)
    assert response.headers["www-authenticate"] == "Bearer"


def test_no_500_in_the_log(server: Server, client: httpx.Client) -> None:
    client.get("/health")
    assert " 500 " not in server.read_log()
    assert "Traceback" not in server.read_log()
