"""Image-level (CycleGAN) adaptation beside DANN for the brain-sex classifier, over several seeds.

Per seed, on the fixed phantom splits of the brain-sex-dann KO, with its network and 600-step
budget (``src/train.py``):

- the baselines, trained by the KO's own code: ``dann``, ``pooled``, ``target_only``, ``source_only``;
- a 3D CycleGAN (``kgrid_py.training.cyclegan``) trained on the unlabelled source-train and
  unlabelled target scans, then used three ways (issue 18):
  ``gan_to_source`` (a) target-test scans translated to the source style, classified by the
  ``source_only`` network; ``gan_pooled`` (b) the classifier trained on source scans translated to
  the target style plus the 20 labelled target scans; ``gan_dann`` (c) as (b) with DANN's
  feature-level discriminator on the unlabelled target scans (CyCADA-style);
- a fresh site classifier (the same network, 2 classes) trained to tell translated source scans
  from real target scans, and scored on scans neither the GAN nor it has seen (source-validation
  translated vs target-test); the same for untranslated source scans as a reference.
  Near 0.5 means the translation fooled it.

Prints Markdown: mean, SD and a t-based 95% CI of target-test accuracy (n = 400) per method,
the per-seed table, each GAN method against DANN paired by seed, and the site classifier.
With ``--figures DIR`` it writes mid-slice PNGs of the first seed's translation.

    nice -n 19 .venv/bin/python benchmarks/brain_gan_comparison.py --seeds 0 1 2 3 4 \\
        --json /tmp/brain-gan.json --figures docs/brain-gan

Not yet run at full budget (see benchmarks/RESULTS.md, issue 18): only a smoke run on tiny
splits. Estimated from the DANN comparison's timings plus ~0.8 s per CycleGAN step on an idle
core: about 10 minutes per seed; on a shared, loaded 2-core machine several times that.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from kgrid_py.training.brain_phantoms import PhantomSet, generate
from kgrid_py.training.cyclegan import (
    MIDSLICES_PNG,
    CycleGAN,
    CycleGANConfig,
    train_cyclegan,
    translate,
    write_midslices,
)

SRC = Path(__file__).resolve().parents[1] / "knowledge_objects" / "brain-sex-dann" / "1.0.0" / "src"
BASELINES = ("dann", "pooled", "target_only", "source_only")
GAN_METHODS = ("gan_to_source", "gan_pooled", "gan_dann")
SITE_STEPS = 200
SITE_BATCH = 32
SITE_TRAIN_N = 300
SITE_TEST_N = 200


def _load_train() -> ModuleType:
    spec = importlib.util.spec_from_file_location("brain_sex_dann_train", SRC / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def mean_ci(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, SD and the two ends of a t-based 95% confidence interval of the mean."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    sd = statistics.stdev(values)
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean, sd, mean - half, mean + half


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """``a - b`` paired by seed: mean, SD, 95% CI, wins of ``a``, paired t and its two-sided p."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, sd, lo, hi = mean_ci(diffs)
    if len(diffs) > 1 and sd > 0:
        result = stats.ttest_rel(a, b)
        t, p = float(result.statistic), float(result.pvalue)
    else:
        t = p = float("nan")
    return {"mean": mean, "sd": sd, "ci_low": lo, "ci_high": hi, "wins": sum(d > 0 for d in diffs), "t": t, "p": p}


def site_accuracy(
    train_mod: ModuleType, fake: np.ndarray, real: np.ndarray, test_fake: np.ndarray, test_real: np.ndarray, seed: int
) -> float:
    """Held-out accuracy of a fresh network trained to tell ``fake`` (0) from ``real`` (1)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = train_mod.model.BrainSexNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    images = np.concatenate([fake, real])
    labels = np.concatenate([np.zeros(len(fake), np.int64), np.ones(len(real), np.int64)])
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(SITE_STEPS):
        idx = rng.choice(len(images), SITE_BATCH, replace=False)
        loss = loss_fn(net(torch.from_numpy(images[idx])), torch.from_numpy(labels[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    test = PhantomSet(
        "site-test",
        "mixed",
        np.concatenate([test_fake, test_real]),
        np.concatenate([np.zeros(len(test_fake), np.int64), np.ones(len(test_real), np.int64)]),
    )
    return train_mod.accuracy(net.eval(), test)


def run_seed(
    train_mod: ModuleType,
    data: Any,
    source_val: PhantomSet,
    seed: int,
    gan_config: CycleGANConfig,
    log: Any,
    config: Any = None,
    baselines: tuple[str, ...] = BASELINES,
) -> tuple[dict[str, float], dict[str, float], CycleGAN]:
    """Every method's target-test accuracy and the site classifier's accuracies for one seed."""
    accuracy: dict[str, float] = {}
    nets: dict[str, nn.Module] = {}
    for method in baselines:
        began = time.perf_counter()
        nets[method] = train_mod.train(method, data, seed, config)
        accuracy[method] = train_mod.accuracy(nets[method], data.target_test)
        log(f"seed {seed} {method}: {accuracy[method]:.3f} ({time.perf_counter() - began:.0f} s)")
    gan = train_cyclegan(
        data.source.images,
        data.target_unlabelled.images,
        seed,
        gan_config,
        progress=lambda step, losses: log(
            f"seed {seed} cyclegan step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
        ),
    )
    log(f"seed {seed} cyclegan trained ({gan.seconds:.0f} s)")
    to_source = replace(data.target_test, images=translate(gan.target_to_source, data.target_test.images))
    accuracy["gan_to_source"] = train_mod.accuracy(nets["source_only"], to_source)
    translated = replace(data.source, images=translate(gan.source_to_target, data.source.images))
    gan_data = replace(data, source=translated)
    for method, base in (("gan_pooled", "pooled"), ("gan_dann", "dann")):
        began = time.perf_counter()
        accuracy[method] = train_mod.accuracy(train_mod.train(base, gan_data, seed, config), data.target_test)
        log(f"seed {seed} {method}: {accuracy[method]:.3f} ({time.perf_counter() - began:.0f} s)")
    real_train = data.target_unlabelled.images[:SITE_TRAIN_N]
    real_test = data.target_test.images[:SITE_TEST_N]
    val = source_val.images[:SITE_TEST_N]
    site = {
        "translated_vs_real": site_accuracy(
            train_mod,
            translated.images[:SITE_TRAIN_N],
            real_train,
            translate(gan.source_to_target, val),
            real_test,
            seed,
        ),
        "untranslated_vs_real": site_accuracy(
            train_mod, data.source.images[:SITE_TRAIN_N], real_train, val, real_test, seed
        ),
    }
    log(f"seed {seed} site classifier: " + ", ".join(f"{k} {v:.3f}" for k, v in site.items()))
    return accuracy, site, gan


def markdown(results: dict[str, list[float]], site: dict[str, list[float]], seeds: list[int], n_test: int) -> str:
    methods = list(results)
    lines = [
        f"Target-test accuracy (n = {n_test}), {len(seeds)} seed(s); 95% CI = mean +/- t(0.975, n-1) SD / sqrt(n)",
        "",
        "| method | mean | SD | 95% CI | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        mean, sd, lo, hi = mean_ci(results[m])
        lines.append(
            f"| {m} | {mean:.3f} | {sd:.3f} | {lo:.3f} to {hi:.3f} | {min(results[m]):.3f} | {max(results[m]):.3f} |"
        )
    lines += ["", "| seed | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for i, seed in enumerate(seeds):
        lines.append(f"| {seed} | " + " | ".join(f"{results[m][i]:.3f}" for m in methods) + " |")
    lines += [
        "",
        "Paired by seed against DANN (method - dann):",
        "",
        "| method | mean difference | SD | 95% CI | better than DANN in | paired t | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in (m for m in GAN_METHODS if m in results):
        d = paired(results[m], results["dann"])
        lines.append(
            f"| {m} | {d['mean']:+.3f} | {d['sd']:.3f} | {d['ci_low']:+.3f} to {d['ci_high']:+.3f} | "
            f"{d['wins']} of {len(seeds)} | {d['t']:.2f} | {d['p']:.3f} |"
        )
    if not site:
        return "\n".join(lines)
    lines += [
        "",
        f"Site classifier (fresh network, {SITE_STEPS} steps, trained on {SITE_TRAIN_N} + {SITE_TRAIN_N}, "
        f"tested on {SITE_TEST_N} source-validation + {SITE_TEST_N} target-test scans; 0.5 = chance):",
        "",
        "| seed | translated source vs real target | untranslated source vs real target |",
        "|---|---|---|",
    ]
    for i, seed in enumerate(seeds):
        lines.append(f"| {seed} | {site['translated_vs_real'][i]:.3f} | {site['untranslated_vs_real'][i]:.3f} |")
    return "\n".join(lines)


def merge(files: list[Path]) -> tuple[dict[str, list[float]], dict[str, list[float]], list[int], int]:
    """Join the ``--json`` files of runs split over processes (by seed, or baselines run with ``--no-gan``).

    A method is kept when every seed has it; a seed given twice for one method must agree.
    """
    per_seed: dict[int, dict[str, float]] = {}
    site_seed: dict[int, dict[str, float]] = {}
    n_test = 0
    for file in files:
        raw = json.loads(file.read_text())
        n_test = raw.get("target_test_n", n_test)
        for i, seed in enumerate(raw["seeds"]):
            for method, values in raw["accuracy"].items():
                old = per_seed.setdefault(seed, {}).setdefault(method, values[i])
                if old != values[i]:
                    raise SystemExit(f"{file}: seed {seed} {method} is {values[i]}, another file says {old}")
            for key, values in raw.get("site", {}).items():
                if len(values) > i:
                    site_seed.setdefault(seed, {})[key] = values[i]
    seeds = sorted(per_seed)
    methods = [m for m in (*BASELINES, *GAN_METHODS) if all(m in per_seed[s] for s in seeds)]
    results = {m: [per_seed[s][m] for s in seeds] for m in methods}
    keys = ("translated_vs_real", "untranslated_vs_real")
    site = {k: [site_seed[s][k] for s in seeds] for k in keys if all(k in site_seed.get(s, {}) for s in seeds)}
    return results, site, seeds, n_test


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--gan-steps", type=int, default=CycleGANConfig.steps)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--baselines",
        nargs="+",
        choices=BASELINES,
        default=list(BASELINES),
        help="baselines to train (dann and source_only always; the others can be quoted from the DANN comparison)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw accuracies here, after every seed")
    parser.add_argument("--figures", type=Path, help="write the first seed's mid-slice PNGs into this folder")
    parser.add_argument("--no-gan", action="store_true", help="train only the --baselines given (no GAN methods)")
    parser.add_argument("--merge", type=Path, nargs="+", help="print the table of earlier --json files, train nothing")
    args = parser.parse_args(argv)
    if args.merge:
        print(markdown(*merge(args.merge)))
        return
    torch.set_num_threads(args.threads)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    train_mod = _load_train()
    start = time.perf_counter()
    data = train_mod.load_data(upper=False)
    source_val = generate("source_val", SITE_TEST_N)
    log(f"data generated in {time.perf_counter() - start:.0f} s")
    gan_config = CycleGANConfig(steps=args.gan_steps)
    if args.no_gan:
        baselines = tuple(args.baselines)
        results: dict[str, list[float]] = {m: [] for m in baselines}
    else:
        baselines = tuple(m for m in BASELINES if m in {*args.baselines, "dann", "source_only"})
        results = {m: [] for m in (*baselines, *GAN_METHODS)}
    # --no-gan trains no site classifier: an empty dict, which markdown() leaves out.
    site: dict[str, list[float]] = {} if args.no_gan else {"translated_vs_real": [], "untranslated_vs_real": []}
    for i, seed in enumerate(args.seeds):
        if args.no_gan:
            for method in baselines:
                began = time.perf_counter()
                results[method].append(train_mod.accuracy(train_mod.train(method, data, seed), data.target_test))
                log(f"seed {seed} {method}: {results[method][-1]:.3f} ({time.perf_counter() - began:.0f} s)")
        else:
            accuracy, site_seed, gan = run_seed(train_mod, data, source_val, seed, gan_config, log, baselines=baselines)
            for m, value in accuracy.items():
                results[m].append(value)
            for k, value in site_seed.items():
                site[k].append(value)
            if i == 0 and args.figures:
                path = write_midslices(gan, source_val.images, data.target_test.images, args.figures / MIDSLICES_PNG)
                log(f"wrote {path}")
        if args.json:
            done = args.seeds[: i + 1]
            args.json.write_text(
                json.dumps(
                    {
                        "seeds": done,
                        "accuracy": results,
                        "site": site,
                        "target_test_n": len(data.target_test),
                        "gan": {"steps": gan_config.steps, "batch": gan_config.batch},
                    },
                    indent=2,
                )
            )
    print(markdown(results, site, args.seeds, len(data.target_test)))
    print(f"\nTotal: {time.perf_counter() - start:.0f} s, {args.threads} thread(s), CycleGAN {gan_config.steps} steps.")


if __name__ == "__main__":
    main()
