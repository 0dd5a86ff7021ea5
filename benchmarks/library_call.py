"""ko.call and ko.call_batch against raw ONNX Runtime on the same model, side by side.

    python benchmarks/library_call.py [--ref kfre@1 --function four-variable] [--rows 1000000]

Inputs are drawn inside each field's intended-population bounds, so every row is valid and
both sides do the same work. Raw ONNX Runtime gets ready float64 arrays and no checks at all.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import pyarrow as pa

import kgrid_py
from kgrid_py.metadata import FieldSpec


def _sample(field: FieldSpec, n: int, rng: np.random.Generator) -> Any:
    if field.type == "enum":
        return rng.choice(field.enum, n).tolist()
    if field.type == "boolean":
        return rng.random(n) < 0.5
    bounds = field.population_bounds or field.hard_bounds
    lo = bounds.minimum if bounds and bounds.minimum is not None else 1.0
    hi = bounds.maximum if bounds and bounds.maximum is not None else lo + 100.0
    values = rng.uniform(lo + (hi - lo) * 0.01, hi - (hi - lo) * 0.01, n)
    return np.round(values) if field.type == "integer" else values


def _per_call_us(func: Any, repeat: int, number: int) -> float:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            func()
        timings.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="kfre@1")
    parser.add_argument("--function", default="four-variable")
    parser.add_argument("--shelf", default="knowledge_objects")
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()

    ko = kgrid_py.load(args.ref, shelf=args.shelf)
    spec = ko.function(args.function)
    rng = np.random.default_rng(2026)
    sampled = {f.name: _sample(f, args.rows, rng) for f in spec.inputs}
    one = {name: (col[0].item() if hasattr(col[0], "item") else col[0]) for name, col in sampled.items()}
    columns = pa.table(sampled)  # as a Parquet extract arrives
    prepared = ko._function(args.function)
    session = prepared.session.session
    feeds_one, _ = prepared.plan.prepare_one(one)
    batch_feeds = prepared.plan.prepare_batch(sampled, args.rows).feeds  # raw gets ready arrays
    outputs = prepared.output_graph_names

    ko.call(args.function, one)
    call_us = _per_call_us(lambda: ko.call(args.function, one), repeat=7, number=2000)
    raw_us = _per_call_us(lambda: session.run(outputs, feeds_one), repeat=7, number=2000)

    def timed(func: Any) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            func()
            best = min(best, time.perf_counter() - start)
        return best

    batch_s = timed(lambda: ko.call_batch(args.function, columns))
    raw_batch_s = timed(lambda: session.run(outputs, batch_feeds))
    n = args.rows
    print(f"# {ko.ref} {args.function}, onnxruntime {__import__('onnxruntime').__version__}")
    print("| measure | kgrid_py | raw ONNX Runtime | ratio |")
    print("|---|---|---|---|")
    print(f"| single call, median us | {call_us:.1f} | {raw_us:.1f} | {call_us / raw_us:.2f}x slower |")
    print(
        f"| batch of {n:,} rows, rows/s | {n / batch_s:,.0f} | {n / raw_batch_s:,.0f} "
        f"| {raw_batch_s / batch_s:.2f}x of raw throughput |"
    )


if __name__ == "__main__":
    main()
