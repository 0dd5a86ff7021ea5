"""Brain volumes in, model tensors out: the preprocessing the brain-MRI KO applies at runtime.

A volume is accepted as a NIfTI file (path or bytes, gzipped or not), a ``.npy`` file, or a
numpy array. NIfTI and full-size arrays must be in MNI152 space at 2 mm (99x117x95) or 1 mm
(197x233x189), as nilearn's MNI152 2009 templates are; they are cropped to the brain's bounding
box and resampled trilinearly onto the model's 32x40x32 grid. Arrays already on that grid pass
through. Only numpy and nibabel are needed: the geometry is stored here as constants (the
training code derives the same numbers from nilearn's brain mask and a test checks they agree).

Files come from callers, so nothing is inflated or allocated beyond the largest volume accepted:
gzip is decompressed with an output limit (:data:`MAX_FILE_BYTES`, a 1 mm MNI volume of float64
plus headers), a NIfTI header's shape is checked before its data is read, and a ``.npy``
header's shape and dtype are checked before numpy allocates the array.
"""

from __future__ import annotations

import io
import math
import os
import zlib
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from kgrid_py.errors import FieldError, InputError

__all__ = [
    "CROP_BOX",
    "GRID_SHAPE",
    "MAX_FILE_BYTES",
    "MIN_MIRROR_CORRELATION",
    "MIN_NEIGHBOUR_CORRELATION",
    "MNI_AFFINES",
    "MNI_SHAPES",
    "brain_likeness",
    "grid_coordinates",
    "prepare_volume",
    "resample_to_grid",
]

GRID_SHAPE: tuple[int, int, int] = (32, 40, 32)
"""The model's input grid (x, y, z), about 4.9 mm per voxel."""

CROP_BOX: tuple[tuple[int, int], ...] = ((11, 87), (12, 105), (0, 79))
"""Inclusive voxel ranges of the MNI152 2 mm brain mask's bounding box plus 2 voxels (77x94x80)."""

MNI_SHAPES: dict[int, tuple[int, int, int]] = {2: (99, 117, 95), 1: (197, 233, 189)}
"""Array shape of the MNI152 2009 grid at each resolution in mm."""

_MNI_ORIGIN = (-98.0, -134.0, -72.0)
MNI_AFFINES: dict[int, np.ndarray] = {
    mm: np.array(
        [
            [mm, 0, 0, _MNI_ORIGIN[0]],
            [0, mm, 0, _MNI_ORIGIN[1]],
            [0, 0, mm, _MNI_ORIGIN[2]],
            [0, 0, 0, 1],
        ],
        dtype=float,
    )
    for mm in MNI_SHAPES
}
"""Voxel-to-mm affine of the MNI152 grid at each resolution (both grids share their origin)."""

_MAX_ITEMSIZE = 8  # float64, the widest voxel type accepted
_MAX_HEADER_BYTES = 64 * 1024  # NIfTI header and extensions, or a .npy header
MAX_FILE_BYTES: int = max(math.prod(s) for s in MNI_SHAPES.values()) * _MAX_ITEMSIZE + _MAX_HEADER_BYTES
"""The largest volume file accepted, uncompressed (about 66 MiB): a gzip member inflating past
it is refused as soon as it does, before the rest is inflated."""

_AFFINE_TOL_MM = 0.1
# A brain fills ~40 % of the crop box; ask for a few percent above background so that a blank,
# constant or single-spot volume is refused instead of classified (it would come out "female").
_MIN_FOREGROUND_FRACTION = 0.02
_MIN_RELATIVE_STD = 1e-6
# Does it look like a brain in MNI space at all? Random noise was classified "male, 0.9999".
# On the model grid, measured on the training phantoms (kgrid_py.training.brain_phantoms, 100
# per split, seeded): neighbouring-voxel correlation >= 0.91 (source_train) and >= 0.97
# (target_test); left-right mirror correlation >= 0.80 and >= 0.85; nilearn's MNI152 template
# 0.93 and 1.00. Uniform or Gaussian noise: about 0.00 and 0.00; an intensity ramp across x: 1.00
# and -1.00. The thresholds sit halfway between noise and the lowest phantom, and the model card
# documents them.
MIN_NEIGHBOUR_CORRELATION = 0.5
MIN_MIRROR_CORRELATION = 0.4
_FIELD = "image"


def grid_coordinates(resolution_mm: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel coordinates, per axis, at which the MNI grid of ``resolution_mm`` is sampled.

    The end points of each axis land on the crop box's first and last voxels (2 mm indices;
    1 mm indices are twice those because the two grids share their origin).
    """
    if resolution_mm not in MNI_SHAPES:
        raise ValueError(f"resolution must be one of {sorted(MNI_SHAPES)} mm, not {resolution_mm}")
    scale = 2 / resolution_mm
    return tuple(  # type: ignore[return-value]
        np.linspace(lo, hi, n) * scale for (lo, hi), n in zip(CROP_BOX, GRID_SHAPE, strict=True)
    )


def resample_to_grid(volume: np.ndarray, resolution_mm: int = 2) -> np.ndarray:
    """Crop an MNI-space volume to the brain box and sample it trilinearly onto ``GRID_SHAPE``.

    Trilinear interpolation on an axis-aligned grid is separable, so it is done one axis at a
    time with plain numpy; float64 inside, float32 out.
    """
    expected = MNI_SHAPES.get(resolution_mm)
    if volume.shape != expected:
        raise ValueError(f"expected shape {expected} at {resolution_mm} mm, got {volume.shape}")
    out = np.asarray(volume, dtype=np.float64)
    for axis, coords in enumerate(grid_coordinates(resolution_mm)):
        lower = np.clip(np.floor(coords).astype(np.intp), 0, out.shape[axis] - 2)
        weight = coords - lower
        shape = [1, 1, 1]
        shape[axis] = -1
        weight = weight.reshape(shape)
        out = np.take(out, lower, axis=axis) * (1 - weight) + np.take(out, lower + 1, axis=axis) * weight
    return out.astype(np.float32)


def prepare_volume(value: Any) -> np.ndarray:
    """Turn one brain volume into the model's float32 input of shape ``[1, 32, 40, 32]``.

    ``value`` is a path (``.nii``, ``.nii.gz``, ``.npy``), the bytes of such a file, or a numpy
    array (or nested lists, as JSON gives) on the model grid (``[32,40,32]`` or
    ``[1,32,40,32]``) or on an MNI152 grid.
    Raises ``InputError`` naming ``image`` when the volume is unreadable, not 3D, not in MNI152
    space at 2 or 1 mm, has NaN or infinite voxels, or is blank.
    """
    if isinstance(value, str | os.PathLike):
        volume = _read_path(Path(value))
    elif isinstance(value, bytes | bytearray | memoryview):
        volume = _read_bytes(bytes(value))
    elif isinstance(value, np.ndarray):
        volume = _from_array(value)
    elif isinstance(value, list | tuple):
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            _fail("nested lists must form a regular numeric array")
        volume = _from_array(array)
    else:
        kind = type(value).__name__
        _fail(f"expected a NIfTI or .npy file (path or bytes) or an array, got {kind}")
    _check_content(volume)
    return volume[np.newaxis]


def _fail(message: str) -> NoReturn:
    raise InputError([FieldError(_FIELD, message)])


def _read_path(path: Path) -> np.ndarray:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        _fail(f"cannot read {path.name!r}: {exc.strerror or exc}")
    if len(data) > MAX_FILE_BYTES:
        _fail(f"{path.name!r} is larger than the largest volume accepted ({MAX_FILE_BYTES} bytes)")
    return _read_bytes(data)


def _read_bytes(data: bytes) -> np.ndarray:
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, MAX_FILE_BYTES)
    elif len(data) > MAX_FILE_BYTES:
        _fail(f"the file is larger than the largest volume accepted ({MAX_FILE_BYTES} bytes)")
    if data[:6] == b"\x93NUMPY":
        return _from_array(_load_npy(data))
    header_size = _nifti_header_size(data)
    if header_size is not None:
        return _from_nifti(data, header_size)
    _fail("not a NIfTI (.nii/.nii.gz) or .npy file; a 2D picture (PNG, JPEG) cannot be used")


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate every gzip member of ``data``, refusing as soon as the output passes ``limit`` bytes.

    ``gzip.decompress`` inflates everything first: a 1 MB bomb became 1 GB in memory.
    """
    out = bytearray()
    pending = data
    while pending:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
        try:
            while True:
                out += inflater.decompress(pending, limit + 1 - len(out))
                if len(out) > limit:
                    _fail(f"the gzip data inflates to more than the largest volume accepted ({limit} bytes)")
                pending = inflater.unconsumed_tail
                if inflater.eof or not pending:
                    break
        except zlib.error as exc:
            _fail(f"corrupt gzip data: {exc}")
        if not inflater.eof:
            _fail("corrupt gzip data: the stream is truncated")
        pending = inflater.unused_data
        if not pending.strip(b"\0"):  # trailing zero padding, as gzip tolerates
            break
    return bytes(out)


def _load_npy(data: bytes) -> np.ndarray:
    """Read a ``.npy`` file, checking the header's dtype and shape before anything is allocated."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_2_0 if version >= (2, 0) else np.lib.format.read_array_header_1_0
        shape, _, dtype = read_header(stream, max_header_size=_MAX_HEADER_BYTES)
    except ValueError as exc:
        _fail(f"unreadable .npy data: {exc}")
    if dtype.kind not in "biuf" or dtype.itemsize > _MAX_ITEMSIZE:
        _fail(f"expected a numeric array of at most {_MAX_ITEMSIZE}-byte values, got dtype {dtype}")
    size = math.prod(shape) * dtype.itemsize
    if len(shape) > 5 or size > MAX_FILE_BYTES - _MAX_HEADER_BYTES:
        _fail(f"the .npy header declares shape {list(shape)[:6]}, larger than any volume accepted")
    if len(data) - stream.tell() < size:
        _fail(f"the .npy data is shorter than its header's shape {list(shape)} declares")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        _fail(f"unreadable .npy data: {exc}")


def _nifti_header_size(data: bytes) -> int | None:
    """348 for NIfTI-1, 540 for NIfTI-2 (either byte order), None for anything else."""
    if len(data) < 348:
        return None
    for order in ("little", "big"):
        size = int.from_bytes(data[:4], order)  # type: ignore[arg-type]
        if size in (348, 540):
            return size
    return None


def _from_nifti(data: bytes, header_size: int) -> np.ndarray:
    import nibabel as nib

    try:
        image_class = nib.Nifti2Image if header_size == 540 else nib.Nifti1Image
        image = image_class.from_bytes(data)
        shape = tuple(int(n) for n in image.header.get_data_shape())
    except Exception as exc:  # nibabel raises many types for a corrupt header or payload
        _fail(f"unreadable NIfTI data: {exc}")
    # The header's shape, before reading the data: nibabel would allocate whatever it declares.
    spatial = shape[:3] if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1) else None
    if spatial is not None and spatial not in MNI_SHAPES.values() and spatial[2] != 1:
        _mni_resolution(spatial)
    if math.prod(shape) > max(math.prod(s) for s in MNI_SHAPES.values()):
        _fail(f"the NIfTI header declares shape {list(shape)[:8]}, larger than any volume accepted")
    try:
        array = np.asanyarray(image.dataobj, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for a corrupt header or payload
        _fail(f"unreadable NIfTI data: {exc}")
    if array.ndim == 4:
        if array.shape[3] != 1:
            _fail(f"a 4D series of {array.shape[3]} volumes was given; send one 3D volume")
        array = array[..., 0]
    if array.ndim < 3 or (array.ndim == 3 and array.shape[2] == 1):
        _fail(f"a 2D image (shape {list(array.shape)}) was given; the model needs a 3D volume")
    if array.ndim != 3:
        _fail(f"a NIfTI volume must be 3D, got {array.ndim}D with shape {list(array.shape)}")
    resolution = _mni_resolution(array.shape)
    array = _to_mni_orientation(array, image.affine, resolution)
    return _resample_checked(array, resolution)


def _mni_resolution(shape: tuple[int, ...]) -> int:
    for mm, mni_shape in MNI_SHAPES.items():
        if tuple(shape) == mni_shape:
            return mm
    expected = " or ".join(f"{list(s)} ({mm} mm)" for mm, s in MNI_SHAPES.items())
    _fail(f"shape {list(shape)} is not an MNI152 grid; expected {expected}")


def _to_mni_orientation(array: np.ndarray, affine: np.ndarray, resolution: int) -> np.ndarray:
    """Flip axes stored in the opposite direction (e.g. LAS), then require the MNI152 affine."""
    affine = np.array(affine, dtype=float)
    for axis in range(3):
        if affine[axis, axis] < 0:
            array = np.flip(array, axis=axis)
            flip = np.eye(4)
            flip[axis, axis] = -1
            flip[axis, 3] = array.shape[axis] - 1
            affine = affine @ flip
    if not np.allclose(affine, MNI_AFFINES[resolution], atol=_AFFINE_TOL_MM):
        _fail(
            f"the affine does not place this {resolution} mm volume on the MNI152 grid "
            f"(origin {_MNI_ORIGIN} mm); register it to MNI152 2009 space first"
        )
    return array


def _resample_checked(array: np.ndarray, resolution: int) -> np.ndarray:
    if not np.isfinite(array).all():
        _fail(f"{int(np.size(array) - np.isfinite(array).sum())} voxels are NaN or infinite")
    return resample_to_grid(array, resolution)


def _from_array(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        _fail(f"expected a numeric array, got dtype {array.dtype}")
    squeezed = np.squeeze(array)
    if squeezed.ndim < 3 or (squeezed.ndim == 3 and squeezed.shape[2] in (3, 4)):
        _fail(f"a 2D image (shape {list(array.shape)}) was given; the model needs a 3D volume")
    if squeezed.shape == GRID_SHAPE:
        volume = np.asarray(squeezed, dtype=np.float32)
        if not np.isfinite(volume).all():
            _fail(f"{int(volume.size - np.isfinite(volume).sum())} voxels are NaN or infinite")
        return volume
    if squeezed.ndim == 3 and squeezed.shape in MNI_SHAPES.values():
        resolution = _mni_resolution(squeezed.shape)
        return _resample_checked(np.asarray(squeezed, dtype=np.float64), resolution)
    _fail(
        f"shape {list(array.shape)} is neither the model grid {[1, *GRID_SHAPE]} "
        f"nor an MNI152 grid {list(MNI_SHAPES[2])} (2 mm) or {list(MNI_SHAPES[1])} (1 mm)"
    )


def _check_content(volume: np.ndarray) -> None:
    values = volume.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scale = max(abs(low), abs(high), 1e-12)
    if float(values.std()) <= _MIN_RELATIVE_STD * scale or high == low:
        _fail("the volume is blank or constant; nothing to classify")
    threshold = low + 0.1 * (float(np.percentile(values, 99.5)) - low)
    if float(np.mean(values > threshold)) < _MIN_FOREGROUND_FRACTION:
        _fail("too few voxels above background; the volume looks blank, not like a brain")
    neighbour, mirror = brain_likeness(values)
    if neighbour < MIN_NEIGHBOUR_CORRELATION or mirror < MIN_MIRROR_CORRELATION:
        _fail(
            "the volume does not look like a skull-stripped T1 brain in MNI152 space: neighbouring-voxel "
            f"correlation {neighbour:.2f} (at least {MIN_NEIGHBOUR_CORRELATION} needed; brains about 0.9), "
            f"left-right mirror correlation {mirror:.2f} (at least {MIN_MIRROR_CORRELATION}; brains about 0.9)"
        )


def brain_likeness(volume: np.ndarray) -> tuple[float, float]:
    """(neighbouring-voxel correlation, left-right mirror correlation) of a grid volume.

    A brain on the MNI grid is smooth at 5 mm and nearly symmetric about the midline (the grid's
    x axis is centred on it); noise is neither, and an image off the grid is not symmetric.
    """
    z = (volume - volume.mean()) / volume.std()
    neighbour = float(np.mean([np.mean(np.diff(z, axis=axis) ** 2) for axis in range(3)]))
    # For unit-variance data, mean squared difference of neighbours = 2 (1 - correlation).
    return 1.0 - neighbour / 2.0, float(np.mean(z * z[::-1]))
