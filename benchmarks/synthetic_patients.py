"""Synthetic patient files for the KFRE and PLCOm2012 KOs: fixed seed, Parquet, written in chunks.

    python benchmarks/synthetic_patients.py --rows 10000000 --out benchmarks/data

Writes ``kfre.parquet`` (id, age, sex, egfr, uacr, region) and ``plco.parquet`` (id and the twelve
PLCOm2012 inputs but threshold), one row group per chunk, so memory stays at one chunk whatever
``--rows`` is. The same seed, rows and chunk size give the same bytes. The values are plausible,
not realistic: about 0.1 % of rows carry a missing or impossible value (so the error path runs)
and some fall outside each KO's intended population (so warnings appear).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20260101
CHUNK = 1_000_000
BAD_SHARE = 0.001

RACES = ["white", "black", "hispanic", "asian", "american_indian_alaska_native", "native_hawaiian_pacific_islander"]
RACE_WEIGHTS = [0.70, 0.12, 0.08, 0.07, 0.015, 0.015]


def kfre_chunk(rng: np.random.Generator, start: int, n: int) -> pa.RecordBatch:
    """CKD patients: eGFR mostly 10-60 (stages 3-5), UACR log-normal in mg/g."""
    age = np.clip(rng.normal(66, 12, n), 18, 100).round(0)
    sex = np.where(rng.random(n) < 0.45, "female", "male")
    egfr = np.clip(rng.gamma(6.0, 5.5, n), 3, 140).round(1)
    uacr = np.clip(np.exp(rng.normal(4.2, 1.8, n)), 0.5, 50_000).round(1)
    region = np.where(rng.random(n) < 0.8, "north_american", "non_north_american")
    egfr_mask = rng.random(n) < BAD_SHARE  # missing eGFR: these rows get an error
    uacr[rng.random(n) < BAD_SHARE / 2] = -1.0  # impossible UACR: an error too
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.arange(start, start + n, dtype=np.int64)),
            pa.array(age),
            pa.array(sex),
            pa.array(egfr, mask=egfr_mask),
            pa.array(uacr),
            pa.array(region),
        ],
        names=["id", "age", "sex", "egfr", "uacr", "region"],
    )


def plco_chunk(rng: np.random.Generator, start: int, n: int) -> pa.RecordBatch:
    """Ever-smokers aged 45-85; current smokers have years_since_quit 0."""
    age = np.clip(rng.normal(63, 7, n), 45, 85).round(0)
    race = np.asarray(RACES)[rng.choice(len(RACES), size=n, p=RACE_WEIGHTS)]
    education = rng.integers(1, 7, n)
    bmi = np.clip(rng.normal(28, 5, n), 14, 60).round(1)
    current = rng.random(n) < 0.45
    smoking_status = np.where(current, "current", "former")
    cigarettes = np.clip(rng.gamma(4.0, 5.0, n), 1, 80).round(0)
    years = np.minimum(np.clip(rng.normal(35, 10, n), 1, 70).round(0), age - 12)
    # Quitting happened after smoking began, after age 12: years + since never exceeds age.
    since = np.where(current, 0.0, np.minimum(np.clip(rng.exponential(10, n), 0, 50).round(0), age - 12 - years))
    bad = rng.random(n) < BAD_SHARE  # a current smoker who quit years ago: a constraint error
    since[bad & current] = 5.0
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.arange(start, start + n, dtype=np.int64)),
            pa.array(age),
            pa.array(race),
            pa.array(education),
            pa.array(bmi),
            pa.array(rng.random(n) < 0.10),
            pa.array(rng.random(n) < 0.08),
            pa.array(rng.random(n) < 0.20),
            pa.array(smoking_status),
            pa.array(cigarettes),
            pa.array(years),
            pa.array(since),
        ],
        names=[
            "id",
            "age",
            "race",
            "education",
            "bmi",
            "copd",
            "personal_cancer_history",
            "family_lung_cancer_history",
            "smoking_status",
            "cigarettes_per_day",
            "smoking_years",
            "years_since_quit",
        ],
    )


GENERATORS: dict[str, Callable[[np.random.Generator, int, int], pa.RecordBatch]] = {
    "kfre": kfre_chunk,
    "plco": plco_chunk,
}


def write(kind: str, path: Path, rows: int, *, seed: int = SEED, chunk: int = CHUNK) -> Path:
    """Write ``rows`` synthetic patients of ``kind`` to ``path`` (Parquet), ``chunk`` rows at a time."""
    make = GENERATORS[kind]
    rng = np.random.default_rng([seed, list(GENERATORS).index(kind)])
    path.parent.mkdir(parents=True, exist_ok=True)
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, rows, chunk):
            batch = make(rng, start, min(chunk, rows - start))
            if writer is None:
                writer = pq.ParquetWriter(path, batch.schema, compression="snappy")
            writer.write_batch(batch, row_group_size=chunk)
    finally:
        if writer is not None:
            writer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data"))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--chunk", type=int, default=CHUNK)
    parser.add_argument("--kind", choices=[*GENERATORS, "all"], default="all")
    args = parser.parse_args()
    for kind in GENERATORS if args.kind == "all" else [args.kind]:
        started = time.perf_counter()
        path = write(kind, args.out / f"{kind}.parquet", args.rows, seed=args.seed, chunk=args.chunk)
        size = path.stat().st_size / 1e6
        print(f"{path}: {args.rows:,} rows, {size:,.1f} MB, {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
