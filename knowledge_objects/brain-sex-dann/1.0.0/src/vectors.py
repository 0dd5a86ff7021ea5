"""Write the brain-sex KO's ``tests.json``: probe volumes with stored probabilities, and refusals.

Probes are target-site phantoms from a fixed seed (``PROBE_SEED``), each sent the way a caller
would send it: some as ``{"base64": <.nii.gz bytes>}`` of the volume painted onto the 2 mm
MNI152 grid (``brain_phantoms.to_mni``), others as nested lists ``[1, 32, 40, 32]``. To keep
``tests.json`` small, NIfTI probes are stored as uint8 with a scale factor (NIfTI's
``scl_slope``, as many scanners write) and list probes are rounded to 2 decimals; the expected probabilities are
computed once, with ONNX Runtime, from exactly the stored input after the KO's preprocessing,
so the vectors check the runtime path without torch. Only confident probes (probability at
least ``MIN_MARGIN`` away from 0.5) are kept, so that float noise across CPUs cannot flip the
predicted class.

Refusals cover a blank and a constant volume, a NaN voxel, a wrong shape, a 2D image, a 4D
series, a volume off the MNI152 grid and a plain string (which could name a server file).

Usage: ``python vectors.py [KO_DIR]`` (default: the folder above this one); needs nilearn for
the phantoms and onnxruntime. ``build.py`` calls :func:`write_vectors` after exporting.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PROBE_SEED", "vectors", "write_vectors"]

PROBE_SEED = 60606
N_NIFTI_PROBES = 2
N_LIST_PROBES = 1
MIN_MARGIN = 0.1
REL_TOL = 1e-5
ABS_TOL = 1e-6
FUNCTION = "classify"
NOTICE_FIELD = "(model)"


def _gz_b64(data: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode("ascii")}


def _nifti_gz(volume: np.ndarray, affine: np.ndarray, quantize: bool = True) -> dict[str, str]:
    import nibabel as nib

    if quantize:
        image = nib.Nifti1Image(volume.astype(np.float32), affine, dtype=np.uint8)
    else:
        image = nib.Nifti1Image(volume, affine)
    return _gz_b64(image.to_bytes())


def _npy_gz(array: np.ndarray) -> dict[str, str]:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return _gz_b64(buffer.getvalue())


def _session(model: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _probes(session: Any) -> list[dict[str, Any]]:
    from kgrid_py.imaging import MNI_AFFINES, prepare_volume
    from kgrid_py.inputs import _prepare_volume
    from kgrid_py.training.brain_phantoms import generate_subjects, to_mni

    phantoms = generate_subjects("target", PROBE_SEED, 16)
    items: list[dict[str, Any]] = []
    for index, (image, label) in enumerate(zip(phantoms.images, phantoms.labels, strict=True)):
        n_nifti = sum(1 for item in items if "NIfTI" in item["name"])
        as_nifti = n_nifti < N_NIFTI_PROBES
        if as_nifti:
            value: Any = _nifti_gz(to_mni(image[0], 2), MNI_AFFINES[2])
        elif len(items) < N_NIFTI_PROBES + N_LIST_PROBES:
            value = np.round(image.astype(np.float64), 2).tolist()
        else:
            break
        tensor = _prepare_volume(value)  # exactly what the KO computes from the stored input
        assert tensor.shape == prepare_volume(image).shape
        probabilities = session.run(["probabilities"], {"image": tensor[np.newaxis]})[0][0]
        if abs(float(probabilities[0]) - 0.5) < MIN_MARGIN:
            continue
        sex = ["female", "male"][int(label)]
        form = "NIfTI 2 mm .nii.gz (uint8, base64)" if as_nifti else "nested lists [1,32,40,32]"
        items.append(
            {
                "name": f"probe {PROBE_SEED}/{index} ({sex} phantom, target site) as {form}",
                "function": FUNCTION,
                "input": {"image": value},
                "expected": {
                    "probability_female": float(probabilities[0]),
                    "probability_male": float(probabilities[1]),
                    "predicted_sex": ["female", "male"][int(probabilities.argmax())],
                },
                "rel_tol": REL_TOL,
                "abs_tol": ABS_TOL,
                "expect_warnings": [NOTICE_FIELD],
                "source": (
                    f"kgrid_py.training.brain_phantoms.generate_subjects('target', {PROBE_SEED}, 16)[{index}]; "
                    "expected probabilities computed once with ONNX Runtime (CPU, 1 thread) from the stored "
                    "input after kgrid_py.imaging.prepare_volume, by src/vectors.py"
                ),
            }
        )
    return items


def _refusals() -> list[dict[str, Any]]:
    from kgrid_py.imaging import GRID_SHAPE, MNI_AFFINES, MNI_SHAPES

    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in GRID_SHAPE), indexing="ij")
    ellipsoid = ((x**2 + y**2 + z**2) < 0.8).astype(np.float32)[np.newaxis]
    with_nan = ellipsoid.copy()
    with_nan[0, 16, 20, 16] = np.nan
    off_grid = MNI_AFFINES[2].copy()
    off_grid[:3, 3] += 10.0  # 10 mm away from the MNI152 origin
    empty_mni = np.zeros(MNI_SHAPES[2], dtype=np.float32)
    cases: list[tuple[str, Any]] = [
        ("blank volume (all zeros)", _npy_gz(np.zeros((1, *GRID_SHAPE), dtype=np.float32))),
        ("constant volume", _npy_gz(np.full((1, *GRID_SHAPE), 5.0, dtype=np.float32))),
        ("a NaN voxel", _npy_gz(with_nan)),
        ("wrong shape [1,30,40,32]", _npy_gz(ellipsoid[:, :30])),
        ("2D image as nested lists", [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]),
        ("2D image as .npy", _npy_gz(np.ones((64, 64), dtype=np.float32))),
        ("4D series of 2 volumes", _nifti_gz(np.zeros((*MNI_SHAPES[2], 2), np.float32), MNI_AFFINES[2], False)),
        ("NIfTI off the MNI152 grid (origin moved 10 mm)", _nifti_gz(empty_mni, off_grid, False)),
        ("a plain string path", "/etc/passwd"),
        # Not a brain: classified "male, 0.9999" before kgrid_py.imaging checked brain likeness.
        (
            "uniform noise (uint8, seeded)",
            _npy_gz(np.random.default_rng(0).integers(0, 256, (1, *GRID_SHAPE), np.uint8)),
        ),
    ]
    return [
        {"name": f"refused: {name}", "function": FUNCTION, "input": {"image": value}, "expect_error": ["image"]}
        for name, value in cases
    ]


def vectors(model: Path) -> dict[str, Any]:
    """The whole ``tests.json`` content for the model at ``model``."""
    return {"vectors": [*_probes(_session(model)), *_refusals()]}


def write_vectors(ko_dir: Path) -> Path:
    """Write ``ko_dir / "tests.json"`` from ``ko_dir / "model.onnx"``; returns its path."""
    ko_dir = Path(ko_dir)
    path = ko_dir / "tests.json"
    path.write_text(json.dumps(vectors(ko_dir / "model.onnx"), separators=(",", ":")) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    written = write_vectors(target)
    print(f"wrote {written} ({written.stat().st_size:,} bytes)")
