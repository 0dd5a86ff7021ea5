"""The activator over the bundled shelf (``knowledge_objects/``), with KFRE as the worked example."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from activator_server import Server

import kgrid_py

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
PATIENT = {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}

pytestmark = pytest.mark.skipif(
    not (SHELF / "kfre" / "1.0.0" / "metadata.json").exists(), reason="knowledge_objects/kfre has not landed yet"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("bundled") / "server.log"
    with Server(SHELF, "--no-watch", log=log) as running:
        yield running


def test_bundled_shelf_is_served_and_failures_are_listed(server: Server) -> None:
    ready = httpx.get(f"{server.url}/ready").json()
    assert "kfre@1.0.0" in ready["served"]
    rows = httpx.get(f"{server.url}/kos").json()["kos"]
    for row in rows:  # whatever else is on the shelf is either served or failed with a reason
        assert row["status"] in ("active", "deprecated", "retired", "draft", "failed")
        if row["status"] == "failed":
            assert row["reason"]


@pytest.mark.parametrize(
    "path", ["/kfre/1/four-variable", "/kfre/1.0.0/four-variable", "/endpoints/kfre/four-variable"]
)
def test_kfre_over_http_matches_the_library(server: Server, path: str) -> None:
    expected = kgrid_py.load("kfre@1.0.0", shelf=SHELF).call("four-variable", PATIENT)
    body = httpx.post(server.url + path, json=PATIENT).json()
    assert body["result"] == expected.result
    assert body["info"]["version"] == "1.0.0"
    assert body["info"]["content_digest"] == expected.provenance.content_digest


def test_kfre_units_and_field_errors(server: Server) -> None:
    response = httpx.post(f"{server.url}/kfre/1/four-variable", json={**PATIENT, "uacr": {"value": 30, "unit": "kg"}})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["uacr"]


def test_kfre_over_the_open_inference_protocol(server: Server) -> None:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        columns = {
            "age": ("FP64", np.array([63.0, 70.0])),
            "sex": ("BYTES", np.array([b"female", b"male"], dtype=np.object_)),
            "egfr": ("FP64", np.array([45.0, 25.0])),
            "uacr": ("FP64", np.array([30.0, 300.0])),
        }
        inputs = []
        for name, (datatype, data) in columns.items():
            tensor = triton.InferInput(name, [2], datatype)
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        result = client.infer("kfre.four-variable", inputs)
    finally:
        client.close()
    library = kgrid_py.load("kfre@1.0.0", shelf=SHELF)
    first = library.call("four-variable", PATIENT).result
    assert result.as_numpy("risk_5y")[0] == pytest.approx(first["risk_5y"], rel=1e-12)
    assert result.as_numpy("risk_2y").shape == (2,)
