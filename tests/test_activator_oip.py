"""The Open Inference Protocol v2 routes, driven by the real ``tritonclient.http`` client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from activator_server import Server, build_shelf
from tritonclient.utils import InferenceServerException

MODEL = "demo-bmi.bmi"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("oip")
    shelf, _ = build_shelf(root)
    with Server(shelf, "--no-watch", log=root / "server.log") as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield connection
    connection.close()


def _inputs(binary: bool, weight: list[float] | None = None) -> list[triton.InferInput]:
    weight = weight or [70.0, 95.5, 50.0]
    n = len(weight)
    columns = {
        "weight": ("FP64", np.array(weight, dtype=np.float64)),
        "height": ("FP64", np.full(n, 1.75)),
        "sex": ("BYTES", np.array(([b"female", b"male"] * n)[:n], dtype=np.object_)),
        "smoker": ("BOOL", np.zeros(n, dtype=bool)),
        "age": ("INT64", np.full(n, 40, dtype=np.int64)),
    }
    inputs = []
    for name, (datatype, data) in columns.items():
        tensor = triton.InferInput(name, [n], datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_model_metadata_describes_tensors(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL
    assert meta["versions"] == ["0.9.0", "1.0.0", "1.1.0"]
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]}
    assert inputs == {
        "weight": ("FP64", [-1]),
        "height": ("FP64", [-1]),
        "sex": ("BYTES", [-1]),
        "smoker": ("BOOL", [-1]),
        "age": ("INT64", [-1]),
    }
    outputs = {t["name"]: t["datatype"] for t in meta["outputs"]}
    assert outputs == {"bmi": "FP64", "adjusted": "FP64", "category": "BYTES", "obese": "BOOL"}
    assert client.get_model_metadata(MODEL, "0.9.0")["inputs"] == meta["inputs"]
    with pytest.raises(InferenceServerException):
        client.get_model_metadata(MODEL, "1.2.0")  # a draft


def test_model_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1.0.0")
    assert not client.is_model_ready("demo-bmi.nope")
    assert not client.is_model_ready(MODEL, "1.3.0")  # failed its integrity check


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_the_kgrid_route(client: triton.InferenceServerClient, server: Server, binary: bool) -> None:
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("bmi", "category", "obese")]
    result = client.infer(MODEL, _inputs(binary), outputs=outputs, request_id="r-1")
    bmi = result.as_numpy("bmi")
    np.testing.assert_allclose(bmi, np.array([70.0, 95.5, 50.0]) / 1.75**2)
    assert [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("category")] == [
        "normal",
        "obese",
        "underweight",
    ]
    assert result.as_numpy("obese").tolist() == [False, True, False]
    response = result.get_response()
    assert response["model_version"] == "1.1.0"
    assert response["id"] == "r-1"
    single = httpx.post(
        f"{server.url}/endpoints/demo-bmi/bmi", json={"weight": 95.5, "height": 1.75, "sex": "male", "age": 40}
    )
    assert single.json()["result"]["bmi"] == pytest.approx(bmi[1], rel=1e-12)


def test_infer_default_outputs_pinned_version(client: triton.InferenceServerClient) -> None:
    result = client.infer(MODEL, _inputs(True), model_version="1.0.0")
    assert result.get_response()["model_version"] == "1.0.0"
    assert set(result.as_numpy("adjusted").shape) == {3}


def test_bad_rows_refuse_the_batch_naming_each(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.infer(MODEL, _inputs(True, weight=[70.0, -5.0, 600.0]))
    assert error.value.status() == "400"
    assert "row 1: weight" in error.value.message() and "row 2: weight" in error.value.message()


@pytest.mark.parametrize(
    ("model", "version", "status"),
    [
        pytest.param("nope.bmi", "", "404", id="unknown-ko"),
        pytest.param("demo-bmi.bmx", "", "404", id="unknown-endpoint"),
        pytest.param("demo-bmi", "", "404", id="no-endpoint-in-name"),
        pytest.param(MODEL, "9.9.9", "404", id="unknown-version"),
        pytest.param(MODEL, "0.5.0", "410", id="retired"),
    ],
)
def test_unknown_models_are_errors_clients_can_read(
    client: triton.InferenceServerClient, model: str, version: str, status: str
) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.infer(model, _inputs(True), model_version=version)
    assert error.value.status() == status
    assert error.value.message()


def test_wrong_datatype_is_400(client: triton.InferenceServerClient) -> None:
    weight = triton.InferInput("weight", [1], "BYTES")
    weight.set_data_from_numpy(np.array([b"70"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as error:
        client.infer(MODEL, [weight])
    assert error.value.status() == "400"
    assert "expected FP64" in error.value.message()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(b"{", "malformed JSON", id="malformed"),
        pytest.param(b'{"inputs": 3}', '"inputs" list', id="inputs-not-a-list"),
        pytest.param(
            b'{"inputs": [{"name": "weight", "datatype": "FP64", "shape": [2], "data": [1]}]}',
            "needs 2",
            id="shape-mismatch",
        ),
        pytest.param(
            b'{"inputs": [{"name": "zz", "datatype": "FP64", "shape": [1], "data": [1]}]}',
            "unexpected",
            id="unknown-input",
        ),
        pytest.param(
            b'{"inputs": [{"name": "weight", "datatype": "FP64", "shape": [1], "data": [NaN]}]}', "NaN", id="nan"
        ),
        pytest.param(
            b'{"inputs": [{"name": "weight", "datatype": "FP64", "shape": [1], "data": ["x"]}]}',
            "numbers",
            id="string-data",
        ),
    ],
)
def test_malformed_requests_are_400_with_an_error_member(server: Server, body: bytes, fragment: str) -> None:
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


@pytest.mark.parametrize("length", ["99", "-1", "abc", ""])
def test_binary_header_that_does_not_fit_the_body_is_400(server: Server, length: str) -> None:
    response = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer", content=b"{}", headers={"Inference-Header-Content-Length": length}
    )
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]


def _json_request(**overrides: dict) -> dict:
    tensors = {
        "weight": {"name": "weight", "datatype": "FP64", "shape": [1], "data": [70.0]},
        "height": {"name": "height", "datatype": "FP64", "shape": [1], "data": [1.75]},
        "sex": {"name": "sex", "datatype": "BYTES", "shape": [1], "data": ["female"]},
        "age": {"name": "age", "datatype": "INT64", "shape": [1], "data": [40]},
    }
    tensors.update(overrides)
    return {"inputs": list(tensors.values())}


def test_int64_tensor_with_a_fraction_is_refused(server: Server) -> None:
    age = {"name": "age", "datatype": "INT64", "shape": [1], "data": [40.7]}
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=_json_request(age=age))
    assert response.status_code == 400 and "whole numbers" in response.json()["error"]
    assert httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=_json_request()).status_code == 200


def test_a_tensor_given_twice_is_refused(server: Server) -> None:
    request = _json_request()
    request["inputs"].append({"name": "weight", "datatype": "FP64", "shape": [1], "data": [90.0]})
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=request)
    assert response.status_code == 400 and "twice" in response.json()["error"]
