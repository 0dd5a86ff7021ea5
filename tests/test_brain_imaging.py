"""prepare_volume: NIfTI (2 mm, 1 mm, gzipped or not), .npy and arrays in; clear refusals."""

from __future__ import annotations

import gzip
import io
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bombs import nifti_gzip_bomb

from kgrid_py.errors import InputError
from kgrid_py.imaging import (
    CROP_BOX,
    GRID_SHAPE,
    MAX_FILE_BYTES,
    MIN_MIRROR_CORRELATION,
    MIN_NEIGHBOUR_CORRELATION,
    MNI_AFFINES,
    MNI_SHAPES,
    brain_likeness,
    prepare_volume,
    resample_to_grid,
)
from kgrid_py.ko import KnowledgeObject


def _painted(volume: np.ndarray, resolution: int) -> np.ndarray:
    """Nearest-neighbour copy of a grid volume on the MNI grid (what to_mni does, without nilearn)."""
    index = []
    for (lo, hi), n, size in zip(CROP_BOX, GRID_SHAPE, MNI_SHAPES[resolution], strict=True):
        position = (np.arange(size) * resolution / 2 - lo) / (hi - lo) * (n - 1)
        index.append(np.clip(np.rint(position), 0, n - 1).astype(np.intp))
    return volume[np.ix_(*index)].astype(np.float32)


@pytest.fixture(scope="module")
def grid_volume() -> np.ndarray:
    """A brain-like ellipsoid with noise, on the model grid."""
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in GRID_SHAPE), indexing="ij")
    inside = (x**2 + y**2 + z**2) < 0.8
    return (inside * (0.6 + 0.3 * rng.random(GRID_SHAPE)) + 0.02).astype(np.float32)


def _nifti_bytes(array: np.ndarray, affine: np.ndarray, gz: bool = False) -> bytes:
    data = nib.Nifti1Image(array, affine).to_bytes()
    return gzip.compress(data) if gz else data


def _assert_refused(value: object, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        prepare_volume(value)
    assert [e.field for e in info.value.errors] == ["image"]
    assert fragment in info.value.errors[0].message, info.value.errors[0].message


@pytest.mark.parametrize("resolution", [2, 1], ids=["2mm", "1mm"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_file_round_trip_is_exact(grid_volume: np.ndarray, tmp_path: Path, resolution: int, suffix: str) -> None:
    path = tmp_path / f"brain{suffix}"
    nib.save(nib.Nifti1Image(_painted(grid_volume, resolution), MNI_AFFINES[resolution]), path)
    prepared = prepare_volume(path)
    assert prepared.shape == (1, *GRID_SHAPE) and prepared.dtype == np.float32
    np.testing.assert_array_equal(prepared[0], grid_volume)
    np.testing.assert_array_equal(prepare_volume(str(path)), prepared)


@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
def test_nifti_bytes(grid_volume: np.ndarray, gz: bool) -> None:
    data = _nifti_bytes(_painted(grid_volume, 2), MNI_AFFINES[2], gz)
    np.testing.assert_array_equal(prepare_volume(data)[0], grid_volume)


def test_radiological_orientation_is_flipped_back(grid_volume: np.ndarray) -> None:
    painted = _painted(grid_volume, 2)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = painted.shape[0] - 1
    las = nib.Nifti1Image(painted[::-1].copy(), MNI_AFFINES[2] @ flip)
    np.testing.assert_array_equal(prepare_volume(las.to_bytes())[0], grid_volume)


def test_single_volume_4d_is_accepted(grid_volume: np.ndarray) -> None:
    data = _nifti_bytes(_painted(grid_volume, 2)[..., np.newaxis], MNI_AFFINES[2])
    np.testing.assert_array_equal(prepare_volume(data)[0], grid_volume)


@pytest.mark.parametrize("shape", [GRID_SHAPE, (1, *GRID_SHAPE), (1, 1, *GRID_SHAPE)])
def test_npy_file_bytes_and_array(grid_volume: np.ndarray, tmp_path: Path, shape: tuple) -> None:
    array = grid_volume.reshape(shape)
    path = tmp_path / "tensor.npy"
    np.save(path, array)
    buffer = io.BytesIO()
    np.save(buffer, array)
    for value in (path, buffer.getvalue(), gzip.compress(buffer.getvalue()), array):
        np.testing.assert_array_equal(prepare_volume(value)[0], grid_volume)


def test_nested_lists_as_json_gives(grid_volume: np.ndarray) -> None:
    np.testing.assert_array_equal(prepare_volume(grid_volume[np.newaxis].tolist())[0], grid_volume)
    _assert_refused([[1.0, 2.0], [3.0]], "regular numeric array")


def test_npy_float64_is_cast(grid_volume: np.ndarray) -> None:
    prepared = prepare_volume(grid_volume.astype(np.float64))
    assert prepared.dtype == np.float32


def test_mni_array_is_resampled(grid_volume: np.ndarray) -> None:
    painted = _painted(grid_volume, 2)
    np.testing.assert_array_equal(prepare_volume(painted)[0], grid_volume)
    np.testing.assert_array_equal(resample_to_grid(painted), grid_volume)


def test_phantom_saved_as_nifti_matches_the_generator(tmp_path: Path) -> None:
    pytest.importorskip("nilearn", reason="the phantom generator needs nilearn")
    from kgrid_py.training.brain_phantoms import generate, to_mni

    ps = generate("target_test", 2)
    for resolution in (2, 1):
        path = tmp_path / f"phantom-{resolution}mm.nii.gz"
        nib.save(nib.Nifti1Image(to_mni(ps.images[1], resolution), MNI_AFFINES[resolution]), path)
        np.testing.assert_array_equal(prepare_volume(path), ps.images[1])


def test_template_resampling_matches_the_generator_grid() -> None:
    pytest.importorskip("nilearn", reason="needs nilearn's MNI152 template")
    from nilearn import datasets

    for resolution in (2, 1):
        data = datasets.load_mni152_template(resolution=resolution).to_bytes()
        prepared = prepare_volume(data)
        direct = resample_to_grid(nib.Nifti1Image.from_bytes(data).get_fdata(), resolution)
        np.testing.assert_array_equal(prepared[0], direct)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param(np.zeros(GRID_SHAPE), "blank or constant", id="zeros"),
        pytest.param(np.full(GRID_SHAPE, 3.0), "blank or constant", id="constant"),
        pytest.param(np.zeros((32, 40)), "2D image", id="2d-array"),
        pytest.param(np.zeros((256, 256, 3)), "2D image", id="rgb-picture"),
        pytest.param(np.zeros((2, 1, *GRID_SHAPE)), "neither the model grid", id="batch-of-2"),
        pytest.param(np.zeros((91, 109, 91)), "neither the model grid", id="fsl-shape"),
        pytest.param(np.array(["a"] * 3), "numeric", id="strings"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(400), "2D picture", id="png-bytes"),
        pytest.param(b"\x1f\x8b garbage", "corrupt gzip", id="bad-gzip"),
        pytest.param(3.5, "got float", id="float"),
    ],
)
def test_refusals(value: object, fragment: str) -> None:
    _assert_refused(value, fragment)


def test_single_bright_voxel_is_blank() -> None:
    volume = np.zeros(GRID_SHAPE, dtype=np.float32)
    volume[16, 20, 16] = 1.0
    _assert_refused(volume, "too few voxels")


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_voxels(grid_volume: np.ndarray, bad: float) -> None:
    volume = grid_volume.copy()
    volume[3, 4, 5] = bad
    _assert_refused(volume, "NaN or infinite")
    painted = _painted(grid_volume, 2)
    painted[50, 50, 50] = bad
    _assert_refused(_nifti_bytes(painted, MNI_AFFINES[2]), "NaN or infinite")


def test_nifti_refusals(grid_volume: np.ndarray, tmp_path: Path) -> None:
    painted = _painted(grid_volume, 2)
    _assert_refused(_nifti_bytes(painted, np.eye(4)), "not place this 2 mm volume")
    _assert_refused(_nifti_bytes(np.zeros((91, 109, 91), np.float32), np.eye(4)), "not an MNI152")
    _assert_refused(_nifti_bytes(painted[:, :, 40:41], MNI_AFFINES[2]), "2D image")
    series = np.stack([painted] * 3, axis=-1)
    _assert_refused(_nifti_bytes(series, MNI_AFFINES[2]), "4D series of 3 volumes")
    _assert_refused(_nifti_bytes(np.zeros_like(painted), MNI_AFFINES[2]), "blank or constant")
    _assert_refused(tmp_path / "missing.nii.gz", "cannot read")
    truncated = _nifti_bytes(painted, MNI_AFFINES[2])[:5000]
    _assert_refused(truncated, "unreadable NIfTI")


# -- hostile files (issue 12): nothing is inflated or allocated past the largest volume --------


def _peak_bytes(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
    except InputError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.fixture(scope="module")
def nifti_bomb() -> bytes:
    bomb = nifti_gzip_bomb()
    assert len(bomb) < 1_100_000
    assert struct.unpack("<I", bomb[-4:])[0] > 1 << 30  # ISIZE: what it claims to inflate to
    return bomb


def test_gzip_bomb_is_refused_without_inflating_it(nifti_bomb: bytes) -> None:
    start = time.perf_counter()
    peak = _peak_bytes(lambda: prepare_volume(nifti_bomb))
    elapsed = time.perf_counter() - start
    _assert_refused(nifti_bomb, f"inflates to more than the largest volume accepted ({MAX_FILE_BYTES} bytes)")
    assert peak < 3 * MAX_FILE_BYTES  # gzip.decompress held the whole GiB
    assert elapsed < 5


def test_gzip_within_the_limit_still_reads(grid_volume: np.ndarray) -> None:
    """Two gzip members (as `cat a.gz b.gz` makes) and trailing zero padding, as gzip accepts."""
    data = _nifti_bytes(_painted(grid_volume, 2), MNI_AFFINES[2])
    members = gzip.compress(data[:1000]) + gzip.compress(data[1000:]) + b"\0" * 16
    np.testing.assert_array_equal(prepare_volume(members), prepare_volume(data))
    _assert_refused(gzip.compress(data)[:-30], "truncated")


def _npy_with_header(shape: tuple[int, ...], dtype: str = "<f8", payload: bytes = b"") -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": dtype, "fortran_order": False, "shape": shape})
    return stream.getvalue() + payload


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param(_npy_with_header((4000, 4000, 1000)), "declares shape [4000, 4000, 1000]", id="128-GB"),
        pytest.param(_npy_with_header((2**62, 2)), "larger than any volume accepted", id="overflowing"),
        pytest.param(_npy_with_header((1, 1, 1, 1, 1, 1, 32, 40, 32)), "larger than any volume", id="9-dims"),
        pytest.param(_npy_with_header((32, 40, 32), "|O"), "numeric array", id="objects"),
        pytest.param(_npy_with_header((32, 40, 32), "<c16"), "numeric array", id="complex"),
        pytest.param(_npy_with_header(GRID_SHAPE, "<f4", bytes(100)), "shorter than its header", id="truncated"),
    ],
)
def test_forged_npy_header_is_refused_before_allocating(data: bytes, fragment: str) -> None:
    assert _peak_bytes(lambda: prepare_volume(data)) < 10 * 1024 * 1024
    _assert_refused(data, fragment)
    _assert_refused(gzip.compress(data), fragment)


def test_forged_nifti_shape_is_refused_before_reading(grid_volume: np.ndarray) -> None:
    image = nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), MNI_AFFINES[2])
    image.header.set_data_shape((2000, 2000, 2000))
    data = image.header.binaryblock + b"\0" * 4 + bytes(1000)
    assert _peak_bytes(lambda: prepare_volume(data)) < 10 * 1024 * 1024
    _assert_refused(data, "not an MNI152 grid")


def test_oversized_file_path_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.nii"
    with path.open("wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    _assert_refused(path, "larger than the largest volume accepted")


# -- does it look like a brain? (issue 11: noise was classified "male, 0.9999") ----------------


@pytest.mark.parametrize(
    "volume",
    [
        pytest.param(np.random.default_rng(1).random(GRID_SHAPE), id="uniform-noise"),
        pytest.param(np.random.default_rng(2).normal(size=GRID_SHAPE), id="gaussian-noise"),
        pytest.param(np.broadcast_to(np.arange(32.0)[:, None, None], GRID_SHAPE).copy(), id="ramp-across-x"),
    ],
)
def test_non_brains_are_refused(volume: np.ndarray) -> None:
    _assert_refused(volume, "does not look like a skull-stripped T1 brain in MNI152 space")


def test_noise_on_the_mni_grid_is_refused_too() -> None:
    noise = np.random.default_rng(3).random(MNI_SHAPES[2]).astype(np.float32)
    _assert_refused(_nifti_bytes(noise, MNI_AFFINES[2], gz=True), "does not look like")


def test_brain_ko_refuses_noise_instead_of_answering() -> None:
    ko = KnowledgeObject.from_path(Path(__file__).resolve().parents[1] / "knowledge_objects/brain-sex-dann/1.0.0")
    with pytest.raises(InputError) as caught:
        ko.call("classify", {"image": np.random.default_rng(4).random((1, *GRID_SHAPE)).astype(np.float32)})
    assert [e.field for e in caught.value.errors] == ["image"]
    batch = ko.call_batch("classify", {"image": [np.random.default_rng(5).random(GRID_SHAPE).tolist()]})
    assert batch.errors[0] is not None and "does not look like" in batch.errors[0]


def test_phantoms_and_the_template_pass_with_margin() -> None:
    """Real phantoms from both sites (and nilearn's template) clear both thresholds with room."""
    pytest.importorskip("nilearn", reason="the phantom generator needs nilearn's MNI152 maps")
    from nilearn import datasets

    from kgrid_py.training import brain_phantoms as bp

    for split in ("source_train", "target_test"):
        for image in bp.generate(split, 12).images:
            neighbour, mirror = brain_likeness(image.reshape(GRID_SHAPE).astype(np.float64))
            assert neighbour > MIN_NEIGHBOUR_CORRELATION + 0.3
            assert mirror > MIN_MIRROR_CORRELATION + 0.3
            prepare_volume(image.reshape(GRID_SHAPE))  # accepted
    template = prepare_volume(datasets.load_mni152_template(resolution=2).to_bytes())[0]
    assert min(brain_likeness(template.astype(np.float64))) > 0.9
