"""Deterministic multi-site brain phantoms for the brain-MRI sex classifier.

No brain MRI with sex labels can be downloaded here, so subjects are synthesised from the MNI152
2009 grey-matter, white-matter and brain-mask maps that nilearn bundles (loaded offline).

A subject's anatomy carries the sex signal: a global scale (about 10 % volume difference) and six
fixed smooth grey-matter blobs whose amplitude follows sex, plus random smooth deformation and
shift. A site (scanner) turns the tissue maps into an image: tissue contrasts, blur, a bias field,
gamma, gain/offset and Rician noise. The "source" site is 3T-like with many labelled subjects;
the "target" site is 1.5T-like, with few labelled ones. Every subject has its own seed
``(split seed, index)``, so a smaller set is the prefix of the full one and tests stay fast.

Needs numpy, scipy and nilearn; no torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from kgrid_py.imaging import CROP_BOX, GRID_SHAPE, MNI_SHAPES, grid_coordinates

__all__ = [
    "SITES",
    "SPLITS",
    "PhantomSet",
    "Site",
    "Split",
    "brain_box",
    "generate",
    "generate_subjects",
    "to_mni",
]

CROP_MARGIN = 2
"""Voxels (2 mm) added around the brain mask's bounding box before resampling."""

_BLOB_SEED = 20160601
_N_BLOBS = 6
_BLOB_SIGMA_MM = (10.0, 18.0)
_SEX_BLOB_AMPLITUDE = 0.12
_BLOB_AMPLITUDE_SD = 0.10
_SEX_SCALE = 0.017
_SCALE_SD = 0.028
_DISPLACEMENT_SD_MM = 2.0
_DISPLACEMENT_SMOOTH_GRID = 2.0  # grid voxels (~10 mm): smooth, anatomically plausible warps
_SHIFT_SD_MM = 2.0
_BIAS_SMOOTH_GRID = 3.0  # grid voxels (~15 mm)
_BIAS_LOCAL_WEIGHT = 0.5
_VOXEL_MM = 2.0


@dataclass(frozen=True)
class Site:
    """How one scanner renders tissue into intensities."""

    name: str
    mu_gm: float
    mu_wm: float
    mu_csf: float
    blur: float  # Gaussian sigma in grid voxels; 0 means none
    bias: float  # SD of the log of the site's fixed bias field
    gamma: float
    gain: float
    offset: float
    noise: float  # sigma of the Rician noise


SITES: dict[str, Site] = {
    "source": Site("source", 0.55, 1.00, 0.15, 0.0, 0.05, 1.0, 1.0, 0.0, 0.03),  # 3T-like
    "target": Site("target", 0.65, 0.95, 0.30, 0.8, 0.20, 0.8, 1.3, 0.1, 0.05),  # 1.5T-like
}


@dataclass(frozen=True)
class Split:
    """A fixed, seeded set of subjects from one site."""

    site: str
    seed: int
    size: int
    labelled: bool


SPLITS: dict[str, Split] = {
    "source_train": Split("source", 1001, 600, True),
    "source_val": Split("source", 1002, 300, True),
    "target_labelled": Split("target", 2001, 20, True),
    "target_unlabelled": Split("target", 2002, 400, False),
    "target_test": Split("target", 2003, 400, True),
    "target_upper": Split("target", 2004, 600, True),  # the many-labels upper bound
}


@dataclass(frozen=True)
class PhantomSet:
    """Images ``[n, 1, 32, 40, 32]`` float32 and labels ``[n]`` (0 female, 1 male).

    Unlabelled splits carry their labels too, for diagnostics; training must not use them.
    """

    name: str
    site: str
    images: np.ndarray
    labels: np.ndarray
    labelled: bool = True

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class _Anatomy:
    gm: np.ndarray  # full 2 mm MNI maps, float64
    wm: np.ndarray
    csf: np.ndarray
    center: np.ndarray  # brain centre of mass, 2 mm voxel coordinates
    blob_centers: np.ndarray  # [6, 3] voxel coordinates
    blob_sigmas: np.ndarray  # [6] voxels
    blob_signs: np.ndarray  # [6] +-1
    grid: np.ndarray  # [3, 32, 40, 32] template-space sampling points


@functools.cache
def _anatomy() -> _Anatomy:
    from nilearn import datasets

    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata()
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    center = np.array(ndimage.center_of_mass(mask))
    rng = np.random.default_rng(_BLOB_SEED)
    candidates = np.argwhere(gm > 0.6)
    blob_centers = candidates[rng.choice(len(candidates), _N_BLOBS, replace=False)].astype(float)
    blob_sigmas = rng.uniform(*_BLOB_SIGMA_MM, size=_N_BLOBS) / _VOXEL_MM
    blob_signs = rng.permutation(np.repeat([1.0, -1.0], _N_BLOBS // 2))
    grid = np.stack(np.meshgrid(*grid_coordinates(2), indexing="ij"))
    return _Anatomy(gm, wm, csf, center, blob_centers, blob_sigmas, blob_signs, grid)


def brain_box() -> tuple[tuple[int, int], ...]:
    """The 2 mm brain mask's bounding box plus ``CROP_MARGIN``, inclusive, from nilearn's map.

    ``kgrid_py.imaging.CROP_BOX`` stores the same numbers so that serving needs no nilearn.
    """
    from nilearn import datasets

    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    voxels = np.argwhere(mask)
    lo = np.maximum(voxels.min(axis=0) - CROP_MARGIN, 0)
    hi = np.minimum(voxels.max(axis=0) + CROP_MARGIN, np.array(mask.shape) - 1)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def generate(split: str, n: int | None = None) -> PhantomSet:
    """The first ``n`` subjects (default: all) of a named split in ``SPLITS``."""
    spec = SPLITS[split]
    size = spec.size if n is None else n
    images, labels = _render_many(SITES[spec.site], spec.seed, size)
    return PhantomSet(split, spec.site, images, labels, spec.labelled)


def generate_subjects(site: str, seed: int, n: int) -> PhantomSet:
    """``n`` labelled subjects from ``site`` with any seed, e.g. for probe volumes."""
    images, labels = _render_many(SITES[site], seed, n)
    return PhantomSet(f"{site}-{seed}", site, images, labels, True)


def to_mni(volume: np.ndarray, resolution_mm: int = 2) -> np.ndarray:
    """Paint a grid volume onto the MNI152 grid by nearest neighbour, as float32.

    The grid's points are >= 2.4 voxels apart, so every voxel that trilinear resampling reads
    for a grid point is nearest to that point: ``prepare_volume`` recovers ``volume`` exactly.
    Used to write phantoms as NIfTI files.
    """
    volume = np.asarray(volume).reshape(GRID_SHAPE)
    scale = 2 / resolution_mm
    index = []
    for (lo, hi), n, size in zip(CROP_BOX, GRID_SHAPE, MNI_SHAPES[resolution_mm], strict=True):
        position = (np.arange(size) / scale - lo) / (hi - lo) * (n - 1)
        index.append(np.clip(np.rint(position), 0, n - 1).astype(np.intp))
    return volume[np.ix_(*index)].astype(np.float32)


def _render_many(site: Site, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((n, 1, *GRID_SHAPE), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        labels[i] = rng.integers(2)
        images[i, 0] = _render(site, 2.0 * labels[i] - 1.0, rng)
    return images, labels


def _render(site: Site, sex: float, rng: np.random.Generator) -> np.ndarray:
    anatomy = _anatomy()
    gm, wm, csf = _subject_tissue(anatomy, sex, rng)
    return _scan(site, gm, wm, csf, rng)


def _subject_tissue(
    anatomy: _Anatomy, sex: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue maps on the grid for one subject: scaled, shifted, warped, with sex blobs."""
    scale = 1.0 + _SEX_SCALE * sex + rng.normal(0.0, _SCALE_SD)
    shift = rng.normal(0.0, _SHIFT_SD_MM / _VOXEL_MM, size=3)
    warp = _smooth_noise(rng, (3, *GRID_SHAPE), _DISPLACEMENT_SMOOTH_GRID)
    warp *= _DISPLACEMENT_SD_MM / _VOXEL_MM
    center = anatomy.center.reshape(3, 1, 1, 1)
    # Sampling the template nearer its centre makes the subject's brain larger.
    points = center + (anatomy.grid - center) / scale + shift.reshape(3, 1, 1, 1) + warp
    gm, wm, csf = (
        ndimage.map_coordinates(m, points, order=1, mode="constant", cval=0.0)
        for m in (anatomy.gm, anatomy.wm, anatomy.csf)
    )
    amplitudes = _SEX_BLOB_AMPLITUDE * anatomy.blob_signs * sex + rng.normal(0.0, _BLOB_AMPLITUDE_SD, size=_N_BLOBS)
    modulation = np.ones(GRID_SHAPE)
    for c, sigma, amplitude in zip(anatomy.blob_centers, anatomy.blob_sigmas, amplitudes, strict=True):
        distance2 = ((points - c.reshape(3, 1, 1, 1)) ** 2).sum(axis=0)
        modulation += amplitude * np.exp(-distance2 / (2 * sigma**2))
    return np.clip(gm * modulation, 0.0, 1.0), wm, csf


def _scan(site: Site, gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Image the tissue as the site's scanner would."""
    image = site.mu_gm * gm + site.mu_wm * wm + site.mu_csf * csf
    if site.blur > 0:
        image = ndimage.gaussian_filter(image, site.blur, mode="nearest")
    image = image * np.exp(site.bias * _bias_field(site.name))
    image = np.maximum(image, 0.0) ** site.gamma
    image = site.gain * image + site.offset
    real = image + rng.normal(0.0, site.noise, size=GRID_SHAPE)
    imaginary = rng.normal(0.0, site.noise, size=GRID_SHAPE)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


@functools.cache
def _bias_field(site: str) -> np.ndarray:
    """The site's coil sensitivity on a log scale (unit SD), fixed per scanner.

    A random quadratic (the coil's overall fall-off) plus half as much smooth local variation
    on the scale of the sex blobs. Fixed rather than drawn per subject, so it is a systematic
    site difference that a classifier trained at another site has never seen.
    """
    rng = np.random.default_rng(list(site.encode()))
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in GRID_SHAPE), indexing="ij")
    terms = np.stack([x, y, z, x * y, x * z, y * z, x**2, y**2, z**2])
    field = _unit(np.tensordot(rng.normal(size=len(terms)), terms, axes=1))
    field += _BIAS_LOCAL_WEIGHT * _smooth_noise(rng, (1, *GRID_SHAPE), _BIAS_SMOOTH_GRID)[0]
    return _unit(field)


def _unit(field: np.ndarray) -> np.ndarray:
    field = field - field.mean()
    return field / max(float(field.std()), 1e-12)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise, rescaled to unit SD per leading component."""
    noise = rng.normal(size=shape)
    out = np.empty_like(noise)
    for i in range(shape[0]):
        smooth = ndimage.gaussian_filter(noise[i], sigma, mode="wrap")
        out[i] = smooth / max(float(smooth.std()), 1e-12)
    return out
