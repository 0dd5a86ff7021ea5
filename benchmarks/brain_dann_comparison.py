"""Target-site accuracy of the five brain-sex training methods over several seeds.

Trains every method of the brain-sex-dann KO (same data, network and 600-step budget as the
shipped model) once per seed and prints Markdown: mean and SD of target-test accuracy per
method, the per-seed table, and DANN against pooled training paired by seed. The data splits
are fixed; a seed sets the initial weights, batch order and dropout.

    .venv/bin/python benchmarks/brain_dann_comparison.py --seeds 0 1 2 3 4 --json out.json

About 5 minutes per seed on one core.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

SRC = Path(__file__).resolve().parents[1] / "knowledge_objects" / "brain-sex-dann" / "1.0.0" / "src"


def _load_train() -> ModuleType:
    spec = importlib.util.spec_from_file_location("brain_sex_dann_train", SRC / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _paired(dann: list[float], pooled: list[float]) -> tuple[float, float, int, float]:
    """Mean and SD of the per-seed difference, the number of seeds DANN wins, and paired t."""
    diffs = [a - b for a, b in zip(dann, pooled, strict=True)]
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    t = mean / (sd / math.sqrt(len(diffs))) if sd and sd > 0 else float("nan")
    return mean, sd, sum(d > 0 for d in diffs), t


def markdown(results: dict[str, list[float]], seeds: list[int], n_test: int) -> str:
    methods = list(results)
    lines = [
        f"Target-test accuracy (n = {n_test}), {len(seeds)} seeds",
        "",
        "| method | mean | SD | min | max |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        values = results[m]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        lines.append(f"| {m} | {statistics.fmean(values):.3f} | {sd:.3f} | {min(values):.3f} | {max(values):.3f} |")
    lines += ["", "| seed | " + " | ".join(methods) + " | DANN - pooled |", "|---" * (len(methods) + 2) + "|"]
    for i, seed in enumerate(seeds):
        row = " | ".join(f"{results[m][i]:.3f}" for m in methods)
        lines.append(f"| {seed} | {row} | {results['dann'][i] - results['pooled'][i]:+.3f} |")
    if "dann" in results and "pooled" in results:
        mean, sd, wins, t = _paired(results["dann"], results["pooled"])
        lines += [
            "",
            f"DANN vs pooled, paired by seed: mean difference {mean:+.3f} (SD {sd:.3f}), "
            f"DANN better in {wins} of {len(seeds)} seeds, paired t = {t:.2f} (df {len(seeds) - 1}).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the raw accuracies here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = _load_train()
    start = time.perf_counter()
    data = train.load_data()
    print(f"data generated in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    results: dict[str, list[float]] = {m: [] for m in train.METHODS}
    seconds: dict[str, list[float]] = {m: [] for m in train.METHODS}
    for seed in args.seeds:
        for method in train.METHODS:
            began = time.perf_counter()
            net = train.train(method, data, seed)
            seconds[method].append(time.perf_counter() - began)
            results[method].append(train.accuracy(net, data.target_test))
            print(
                f"seed {seed} {method}: {results[method][-1]:.3f} ({seconds[method][-1]:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        if args.json:
            done = args.seeds[: len(results["dann"])]
            args.json.write_text(json.dumps({"seeds": done, "accuracy": results, "seconds": seconds}, indent=2))
    print(markdown(results, args.seeds, len(data.target_test)))
    mean_seconds = {m: statistics.fmean(s) for m, s in seconds.items()}
    print("\nMean training time per run (s): " + ", ".join(f"{m} {s:.0f}" for m, s in mean_seconds.items()))
    print(f"Total: {time.perf_counter() - start:.0f} s with {args.threads} thread(s).")


if __name__ == "__main__":
    main()
