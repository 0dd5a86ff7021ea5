"""brain-sex-dann inference latency: library and HTTP against raw ONNX Runtime; preprocessing alone.

    python benchmarks/brain_inference.py [--repeat 200] [--batch 64]

Volumes are target-site phantoms (``kgrid_py.training.brain_phantoms``, needs nilearn), already
on the model grid, so every path classifies the same tensor:

- raw ONNX Runtime: ``session.run`` on a ready float32 ``[n, 1, 32, 40, 32]`` array, 1 thread;
- library: ``ko.call("classify", {"image": array})`` (checks, content tests, output mapping) and
  ``ko.call_batch`` for the batch; plus ``ko.call`` with the 2 mm ``.nii.gz`` bytes (adds NIfTI
  decoding and resampling);
- HTTP: a real ``kgrid serve`` on loopback (1 worker, ORT 1 thread, no access log), one
  keep-alive client: the raw ``.nii.gz`` body, base64 ``.npy`` in JSON, and OIP binary FP32
  tensors (tritonclient) for the batch;
- preprocessing alone: ``kgrid_py.imaging.prepare_volume`` on NIfTI bytes at 2 mm and 1 mm,
  gzipped or not (float32 volumes painted onto the MNI152 grid with ``to_mni``).

Medians (and p90) in milliseconds of ``--repeat`` timed runs after warm-up.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import onnxruntime as ort

import kgrid_py
from kgrid_py.imaging import MNI_AFFINES, prepare_volume
from kgrid_py.training.brain_phantoms import generate_subjects, to_mni

JSON = "application/json"
KO_DIR = Path(__file__).resolve().parents[1] / "knowledge_objects" / "brain-sex-dann" / "1.0.0"


def _time(func: Callable[[], Any], repeat: int, warmup: int = 5) -> tuple[float, float]:
    for _ in range(warmup):
        func()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.9)]


def _nifti(volume: np.ndarray, resolution: int, gz: bool) -> bytes:
    data = nib.Nifti1Image(to_mni(volume, resolution), MNI_AFFINES[resolution]).to_bytes()
    return gzip.compress(data, compresslevel=6) if gz else data


def _npy_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(shelf: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from kgrid_py.cli import main; main()", "serve", str(shelf)]
    command += ["--port", str(port), "--no-watch", "--no-access-log", "--max-body-bytes", str(256 * 1024 * 1024)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    repeat, n = args.repeat, args.batch
    batch_repeat = max(10, repeat // 10)

    images = generate_subjects("target", 31337, n).images  # [n, 1, 32, 40, 32] float32
    one = images[:1]
    volume = images[0, 0]
    rows: list[tuple[str, str, float, float]] = []

    def record(group: str, name: str, func: Callable[[], Any], times: int) -> None:
        median, p90 = _time(func, times)
        rows.append((group, name, median, p90))
        print(f"{group:<14} {name:<58} median {median:8.3f} ms   p90 {p90:8.3f} ms", flush=True)

    # -- preprocessing alone ------------------------------------------------------------------
    files = {
        (mm, gz): _nifti(volume, mm, gz) for mm in (2, 1) for gz in (False, True)
    }  # float32, as a registration tool writes
    for (mm, gz), data in files.items():
        label = f"prepare_volume {mm} mm .nii{'.gz' if gz else ''} ({len(data) / 1e6:.1f} MB)"
        record("preprocessing", label, lambda data=data: prepare_volume(data), max(20, repeat // (8 if mm == 1 else 2)))
    record(
        "preprocessing", "prepare_volume grid array [1,32,40,32] (checks only)", lambda: prepare_volume(one[0]), repeat
    )

    # -- raw ONNX Runtime and the library -----------------------------------------------------
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(KO_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])
    ko = kgrid_py.load(str(KO_DIR))
    nii_gz_2mm = files[(2, True)]
    expected = session.run(None, {"image": one})[0][0]
    got = ko.call("classify", {"image": one[0]}).result
    assert abs(got["probability_male"] - float(expected[1])) < 1e-6, (got, expected)

    record(
        "single volume",
        "raw ONNX Runtime session.run [1,1,32,40,32]",
        lambda: session.run(None, {"image": one}),
        repeat,
    )
    record("single volume", "library ko.call, grid array", lambda: ko.call("classify", {"image": one[0]}), repeat)
    record(
        "single volume",
        "library ko.call, 2 mm .nii.gz bytes (incl. preprocessing)",
        lambda: ko.call("classify", {"image": nii_gz_2mm}),
        max(20, repeat // 2),
    )
    record(
        f"batch of {n}",
        f"raw ONNX Runtime session.run [{n},1,32,40,32]",
        lambda: session.run(None, {"image": images}),
        batch_repeat,
    )
    record(
        f"batch of {n}",
        "library ko.call_batch, grid arrays",
        lambda: ko.call_batch("classify", {"image": images}),
        batch_repeat,
    )

    # -- HTTP -----------------------------------------------------------------------------------
    import tritonclient.http as triton

    with tempfile.TemporaryDirectory() as tmp:
        shelf = Path(tmp) / "shelf"
        shutil.copytree(KO_DIR, shelf / "brain-sex-dann" / "1.0.0")
        port = _free_port()
        process = _serve(shelf, port)
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.connect()
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            url = "/brain-sex-dann/1.0.0/classify"

            def post(body: bytes, media: str) -> None:
                # http.client sends headers and a bytes body in one write (no Nagle/delayed-ACK stall)
                connection.request("POST", url, body=body, headers={"Content-Type": media})
                response = connection.getresponse()
                text = response.read()
                assert response.status == 200, text[:500]

            npy_one = json.dumps({"image": {"base64": _npy_b64(one[0])}}).encode()
            record("single volume", "HTTP JSON {base64: .npy of the grid array}", lambda: post(npy_one, JSON), repeat)
            record(
                "single volume",
                "HTTP raw body, 2 mm .nii.gz (incl. preprocessing)",
                lambda: post(nii_gz_2mm, "application/gzip"),
                max(20, repeat // 2),
            )
            batch_json = json.dumps([{"image": {"base64": _npy_b64(image)}} for image in images]).encode()
            record(
                f"batch of {n}", "HTTP JSON array of base64 .npy items", lambda: post(batch_json, JSON), batch_repeat
            )
            connection.close()
            oip = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
            try:
                for label, array, times in (("single volume", one, repeat), (f"batch of {n}", images, batch_repeat)):
                    tensor = triton.InferInput("image", list(array.shape), "FP32")
                    tensor.set_data_from_numpy(array, binary_data=True)
                    outputs = [triton.InferRequestedOutput("probability_male", binary_data=True)]
                    record(
                        label,
                        f"HTTP OIP binary FP32 {list(array.shape)} (tritonclient)",
                        lambda tensor=tensor, outputs=outputs: oip.infer(
                            "brain-sex-dann.classify", [tensor], outputs=outputs
                        ),
                        times,
                    )
            finally:
                oip.close()
        finally:
            process.terminate()
            process.wait(timeout=10)

    print("\n| group | path | median ms | p90 ms |\n|---|---|---:|---:|")
    for group, name, median, p90 in rows:
        print(f"| {group} | {name} | {median:.3f} | {p90:.3f} |")


if __name__ == "__main__":
    main()
