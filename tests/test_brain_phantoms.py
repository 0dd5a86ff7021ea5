"""The multi-site brain phantoms: seeded, shaped for the model, with a sex effect and a site shift."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nilearn", reason="the phantom generator needs nilearn's MNI152 maps")
pytest.importorskip("scipy", reason="the phantom generator needs scipy")

from kgrid_py.imaging import CROP_BOX, GRID_SHAPE
from kgrid_py.training import brain_phantoms as bp


def _zscored(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float64)
    return (flat - flat.mean(axis=1, keepdims=True)) / flat.std(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def source() -> bp.PhantomSet:
    return bp.generate("source_train", 60)


@pytest.fixture(scope="module")
def target() -> bp.PhantomSet:
    return bp.generate("target_test", 60)


def test_crop_box_constant_matches_nilearn_mask() -> None:
    assert bp.brain_box() == CROP_BOX
    assert tuple(hi - lo + 1 for lo, hi in CROP_BOX) == (77, 94, 80)


def test_split_sizes_follow_the_design() -> None:
    sizes = {name: split.size for name, split in bp.SPLITS.items()}
    assert sizes == {
        "source_train": 600,
        "source_val": 300,
        "target_labelled": 20,
        "target_unlabelled": 400,
        "target_test": 400,
        "target_upper": 600,
    }
    assert len({split.seed for split in bp.SPLITS.values()}) == len(bp.SPLITS)


def test_shapes_and_labels(source: bp.PhantomSet) -> None:
    assert source.images.shape == (60, 1, *GRID_SHAPE)
    assert source.images.dtype == np.float32
    assert source.labels.dtype == np.int64
    assert set(np.unique(source.labels)) == {0, 1}
    assert np.isfinite(source.images).all()
    assert source.site == "source" and source.labelled
    assert not bp.generate("target_unlabelled", 1).labelled


def test_same_seed_same_subjects_and_prefixes_agree() -> None:
    first = bp.generate("target_labelled", 3)
    again = bp.generate("target_labelled", 5)
    np.testing.assert_array_equal(first.images, again.images[:3])
    np.testing.assert_array_equal(first.labels, again.labels[:3])
    other = bp.generate("target_test", 3)
    assert not np.array_equal(first.images, other.images)


def test_generate_subjects_is_seeded() -> None:
    a = bp.generate_subjects("source", 7, 2)
    b = bp.generate_subjects("source", 7, 2)
    c = bp.generate_subjects("source", 8, 2)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("split", ["source", "target"])
def test_males_have_larger_brains(split: str, request: pytest.FixtureRequest) -> None:
    ps: bp.PhantomSet = request.getfixturevalue(split)
    size = (_zscored(ps.images) > -0.5).sum(axis=1)
    male, female = size[ps.labels == 1], size[ps.labels == 0]
    pooled_sd = np.sqrt((male.var(ddof=1) + female.var(ddof=1)) / 2)
    effect = (male.mean() - female.mean()) / pooled_sd
    print(f"{split}: brain-size effect size (Cohen's d) {effect:.2f}")
    assert effect > 0.8


def test_site_shift_survives_standardisation(source: bp.PhantomSet, target: bp.PhantomSet) -> None:
    # Nearest-centroid site classifier on z-scored volumes: fit on half, test on the other half.
    zs, zt = _zscored(source.images), _zscored(target.images)
    cs, ct = zs[:30].mean(axis=0), zt[:30].mean(axis=0)
    held_out = np.concatenate([zs[30:], zt[30:]])
    truth = np.r_[np.zeros(30), np.ones(30)]
    guess = (((held_out - ct) ** 2).sum(1) < ((held_out - cs) ** 2).sum(1)).astype(float)
    print(f"site classifier accuracy {np.mean(guess == truth):.2f}")
    assert np.mean(guess == truth) >= 0.95


@pytest.mark.parametrize("resolution", [2, 1])
def test_to_mni_paints_the_mni_grid(source: bp.PhantomSet, resolution: int) -> None:
    painted = bp.to_mni(source.images[0], resolution)
    expected = {2: (99, 117, 95), 1: (197, 233, 189)}[resolution]
    assert painted.shape == expected and painted.dtype == np.float32
