"""The OpenAPI a running server publishes lists every unit spelling it accepts, and every one listed works."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from activator_server import Server

REPO = Path(__file__).resolve().parent.parent
CKD = {"age": 55, "sex": "male"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("openapi-units")
    shelf = root / "shelf"
    shutil.copytree(REPO / "knowledge_objects" / "ckd-epi-egfr" / "2.0.0", shelf / "ckd-epi-egfr" / "2.0.0")
    with Server(shelf, "--no-watch", "--no-access-log", "--max-batch-rows", "37", log=root / "server.log") as running:
        yield running


def _creatinine(spec: dict, path: str) -> dict:
    body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in body:
        body = body["oneOf"][0]
    return body["properties"]["creatinine"]


@pytest.mark.parametrize("where", ["service", "combined"])
def test_every_accepted_unit_is_listed_and_every_listed_unit_is_accepted(server: Server, where: str) -> None:
    if where == "service":
        spec = httpx.get(f"{server.url}/kos/ckd-epi-egfr/2.0.0/service").json()
        field = _creatinine(spec, "/egfr-cr")
    else:
        spec = httpx.get(f"{server.url}/openapi.json").json()
        field = _creatinine(spec, "/ckd-epi-egfr/2.0.0/egfr-cr")
    plain, quantity = field["oneOf"]
    assert plain["type"] == "number" and ("minimum" in plain or "exclusiveMinimum" in plain) and "maximum" in plain
    unit = quantity["properties"]["unit"]
    assert {"mg/dL", "umol/L", "µmol/L", "μmol/L"} <= set(unit["enum"])
    assert unit["maxLength"] == 64
    results = {}
    for spelling in unit["enum"]:
        value = 1.2 if spelling == "mg/dL" else 106.08  # the same creatinine: 1.2 mg/dL is 106.08 umol/L
        response = httpx.post(
            f"{server.url}/ckd-epi-egfr/2.0.0/egfr-cr", json={**CKD, "creatinine": {"value": value, "unit": spelling}}
        )
        assert response.status_code == 200, (spelling, response.text)
        results[spelling] = {k: v for k, v in response.json()["result"].items() if isinstance(v, float)}
    first = results["mg/dL"]
    assert first and all(r == pytest.approx(first, rel=1e-3) for r in results.values()), results
    sex = spec_field(spec, where, "sex")
    assert sex["enum"] == ["female", "male"]


def spec_field(spec: dict, where: str, name: str) -> dict:
    path = "/egfr-cr" if where == "service" else "/ckd-epi-egfr/2.0.0/egfr-cr"
    body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in body:
        body = body["oneOf"][0]
    return body["properties"][name]


def test_the_combined_openapi_states_the_servers_batch_limit(server: Server) -> None:
    """A batch's maxItems is the server's --max-batch-rows, and one row more is refused as the spec says."""
    spec = httpx.get(f"{server.url}/openapi.json").json()
    body = spec["paths"]["/ckd-epi-egfr/2.0.0/egfr-cr"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    batch = body["oneOf"][1]
    assert batch["maxItems"] == 37
    row = {**CKD, "creatinine": 1.0}
    assert httpx.post(f"{server.url}/ckd-epi-egfr/2.0.0/egfr-cr", json=[row] * 37).status_code == 200
    assert httpx.post(f"{server.url}/ckd-epi-egfr/2.0.0/egfr-cr", json=[row] * 38).status_code == 413
