"""The brain-sex KO over HTTP, against a real server: base64 JSON, a raw NIfTI body, OIP tensors.

The volumes are the KO's own stored probes (``tests.json``): NIfTI bytes and a grid tensor with
probabilities computed once with ONNX Runtime, so no phantom generator (nilearn) is needed here.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from activator_server import Server
from bombs import nifti_gzip_bomb
from demo_ko import write_demo_ko
from tritonclient.utils import InferenceServerException

KO_DIR = Path(__file__).resolve().parents[1] / "knowledge_objects" / "brain-sex-dann" / "1.0.0"
V1 = "/brain-sex-dann/1.0.0/classify"
V2 = "/endpoints/brain-sex-dann/classify"
MODEL = "brain-sex-dann.classify"
MAX_BODY = 16 * 1024 * 1024
PROBLEM = "application/problem+json"


def _probes() -> tuple[list[tuple[bytes, dict]], tuple[np.ndarray, dict]]:
    """(NIfTI .nii.gz bytes, expected) pairs, and the grid tensor probe with its expected."""
    vectors = json.loads((KO_DIR / "tests.json").read_text())["vectors"]
    probes = [v for v in vectors if "expected" in v]
    nifti = [
        (base64.b64decode(v["input"]["image"]["base64"]), v["expected"])
        for v in probes
        if "base64" in v["input"]["image"]
    ]
    grid = next(v for v in probes if isinstance(v["input"]["image"], list))
    return nifti, (np.asarray(grid["input"]["image"], dtype=np.float32), grid["expected"])


NIFTI, GRID = _probes()


def _check(result: dict, expected: dict) -> None:
    assert result["predicted_sex"] == expected["predicted_sex"]
    for name in ("probability_female", "probability_male"):
        assert result[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("brain-http")
    shelf = root / "shelf"
    shutil.copytree(KO_DIR, shelf / "brain-sex-dann" / "1.0.0")
    write_demo_ko(shelf / "demo-bmi" / "1.0.0")  # a KO without a file input
    with Server(shelf, "--no-watch", "--max-body-bytes", str(MAX_BODY), log=root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def test_served_as_active(http: httpx.Client) -> None:
    rows = {row["id"]: row for row in http.get("/kos").json()["kos"]}
    assert rows["brain-sex-dann"]["status"] == "active"
    assert rows["brain-sex-dann"]["endpoints"] == ["classify"]


def test_base64_json(http: httpx.Client) -> None:
    data, expected = NIFTI[0]
    response = http.post(V1, json={"image": {"base64": base64.b64encode(data).decode()}})
    assert response.status_code == 200, response.text
    body = response.json()
    _check(body["result"], expected)
    assert len(body["info"]["warnings"]) == 1
    assert body["info"]["warnings"][0].startswith("(model): ") and "synthetic" in body["info"]["warnings"][0]


@pytest.mark.parametrize(
    ("path", "media", "gz"),
    [(V1, "application/gzip", True), (V2, "application/octet-stream", True), (V1, "application/octet-stream", False)],
    ids=["v1-gzip", "v2-octet-gz", "v1-octet-nii"],
)
def test_raw_nifti_body(http: httpx.Client, path: str, media: str, gz: bool) -> None:
    for data, expected in NIFTI:
        body = data if gz else gzip.decompress(data)
        response = http.post(path, content=body, headers={"Content-Type": media})
        assert response.status_code == 200, response.text
        _check(response.json()["result"], expected)


def test_json_batch_of_files(http: httpx.Client) -> None:
    items = [{"image": {"base64": base64.b64encode(d).decode()}} for d, _ in NIFTI] + [{"image": "/etc/passwd"}]
    response = http.post(V2, json=items)
    assert response.status_code == 200
    body = response.json()
    for result, (_, expected) in zip(body["result"], NIFTI, strict=False):
        _check(result, expected)
    assert body["result"][-1] is None and body["info"]["errors"][-1][0]["field"] == "image"


@pytest.mark.parametrize(
    ("content", "media", "status"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(600), "application/octet-stream", 422),  # a 2D picture
        (gzip.compress(b"not a volume" * 100), "application/gzip", 422),
        (b"", "application/octet-stream", 400),
        (b"scan.nii.gz", "text/plain", 415),
    ],
    ids=["png", "gzip-garbage", "empty", "text-plain"],
)
def test_raw_refusals_are_problems(http: httpx.Client, content: bytes, media: str, status: int) -> None:
    response = http.post(V1, content=content, headers={"Content-Type": media})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    if status == 422:
        assert [e["field"] for e in response.json()["errors"]] == ["image"]


@pytest.mark.parametrize(
    "image",
    ["/etc/passwd", {"base64": "not base64!"}, [[1.0, 2.0], [3.0, 4.0]], np.zeros((1, 32, 40, 32)).tolist()],
    ids=["string-path", "bad-base64", "2d", "blank"],
)
def test_json_refusals_name_the_image(http: httpx.Client, image: object) -> None:
    response = http.post(V1, json={"image": image})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert [e["field"] for e in response.json()["errors"]] == ["image"]


def test_raw_body_needs_a_file_input(http: httpx.Client) -> None:
    response = http.post("/demo-bmi/1.0.0/bmi", content=NIFTI[0][0], headers={"Content-Type": "application/gzip"})
    assert response.status_code == 415
    assert response.headers["content-type"].startswith(PROBLEM)


@pytest.fixture
def triton_client(server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_oip_fp32_tensor(triton_client: triton.InferenceServerClient, binary: bool) -> None:
    metadata = triton_client.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 32, 40, 32]}]
    tensor, expected = GRID
    batch = np.stack([tensor, tensor])  # [2, 1, 32, 40, 32]
    image = triton.InferInput("image", list(batch.shape), "FP32")
    image.set_data_from_numpy(batch, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probability_male", "predicted_sex")]
    result = triton_client.infer(MODEL, [image], outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("probability_male"), [expected["probability_male"]] * 2, rtol=1e-5)
    assert [s.decode() if isinstance(s, bytes) else s for s in result.as_numpy("predicted_sex")] == [
        expected["predicted_sex"]
    ] * 2
    assert "synthetic" in result.get_response()["parameters"]["warnings"]


def test_oip_refuses_a_blank_volume_and_a_wrong_shape(triton_client: triton.InferenceServerClient) -> None:
    blank = triton.InferInput("image", [1, 1, 32, 40, 32], "FP32")
    blank.set_data_from_numpy(np.zeros((1, 1, 32, 40, 32), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="blank or constant"):
        triton_client.infer(MODEL, [blank])
    flat = triton.InferInput("image", [1, 32, 40, 32], "FP32")
    flat.set_data_from_numpy(GRID[0][0][np.newaxis])
    with pytest.raises(InferenceServerException, match="expected"):
        triton_client.infer(MODEL, [flat])


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_gzip_bomb_is_a_422_and_the_server_stays_small(server: Server, http: httpx.Client) -> None:
    """1 MB inflating to 1 GiB: it once took the server to 2.3 GB peak RSS."""
    bomb = nifti_gzip_bomb()
    for response in (
        http.post(V1, content=bomb, headers={"Content-Type": "application/gzip"}),
        http.post(V2, json={"image": {"base64": base64.b64encode(bomb).decode()}}),
    ):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
        assert "inflates to more than the largest volume accepted" in response.json()["errors"][0]["message"]
    assert http.get("/health").status_code == 200
    assert _peak_rss_bytes(server.process.pid) < 1 << 30
