"""One short seeded training run of the brain-sex KO against issue 6's accuracy floors, with margins.

The shipped model (``src/build.py``: seed 0, 600 steps, batches 32 source + 8 target labelled +
32 unlabelled, 400 test subjects) takes about 2.5 minutes for DANN alone on one core, plus
about 2 minutes for the comparison methods. This test keeps the same seed, step count, data
splits and network but halves every batch (16 + 4 + 16) and scores the first 200 target-test
subjects: DANN, target-only and source-only together, data generation included, took 140 s
on one torch thread (2-core machine, load average 2 from other jobs).

Measured with this exact configuration on the 2-core development machine: DANN 0.865,
target-only 0.740 (gap +0.125), source-only 0.715. The floors are issue 6's targets widened by
a margin, because the run is shorter and n = 200 has a standard error of about 0.025:

==========================  =============  ======  ==========
claim                       issue target   margin  test floor
==========================  =============  ======  ==========
DANN accuracy               >= 0.80        0.02    >= 0.78
DANN minus target-only      >= 0.08        0.03    >= 0.05
source-only accuracy        <= 0.70        0.05    <= 0.75
==========================  =============  ======  ==========

Source-only is the fragile claim: over 5 seeds of the full budget it ranges 0.61-0.81 (mean
0.72, ``benchmarks/RESULTS.md``), so only the seeded run is held to it, with the widest margin.
Results repeat bit for bit with the same torch thread count on the same machine; other CPUs may
move an accuracy by a subject or two, which the margins absorb.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import pytest
from clinical_support import import_source

KO_DIR = Path(__file__).resolve().parents[1] / "knowledge_objects" / "brain-sex-dann" / "1.0.0"
SEED = 0
TEST_SUBJECTS = 200
DANN_FLOOR = 0.80 - 0.02
GAP_FLOOR = 0.08 - 0.03
SOURCE_ONLY_CEILING = 0.70 + 0.05


def _ko_module(name: str) -> ModuleType:
    # The KO's source files import each other under these names.
    return import_source(KO_DIR / "src" / f"{name}.py", name=f"brain_sex_dann_{name}")


def test_short_seeded_run_meets_the_floors_with_margins() -> None:
    torch = pytest.importorskip("torch", reason="training needs torch")
    pytest.importorskip("nilearn", reason="the phantom generator needs nilearn")
    from kgrid_py.training.brain_phantoms import generate

    torch.set_num_threads(1)
    train = _ko_module("train")
    started = time.perf_counter()
    data = train.BrainData(
        source=generate("source_train"),
        target_labelled=generate("target_labelled"),
        target_unlabelled=generate("target_unlabelled"),
        target_test=generate("target_test", TEST_SUBJECTS),
    )
    config = train.TrainConfig(source_batch=16, target_batch=4, unlabelled_batch=16)  # 600 steps
    accuracy = {}
    for method in ("dann", "target_only", "source_only"):
        accuracy[method] = train.accuracy(train.train(method, data, SEED, config), data.target_test)
    print(
        f"seed {SEED}, {config.steps} steps, half batches, {TEST_SUBJECTS} target-test subjects: "
        + ", ".join(f"{m} {a:.3f}" for m, a in accuracy.items())
        + f" ({time.perf_counter() - started:.0f} s)"
    )
    assert accuracy["dann"] >= DANN_FLOOR
    assert accuracy["dann"] - accuracy["target_only"] >= GAP_FLOOR
    assert accuracy["source_only"] <= SOURCE_ONLY_CEILING
