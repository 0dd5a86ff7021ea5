"""Train the brain-sex network five ways on the same data, network and budget.

- ``dann``: source labels + the few target labels + unlabelled target scans, with the
  gradient-reversal discriminator (the KO's model);
- ``pooled``: source and target labels pooled, no discriminator;
- ``target_only``: the 20 target labels alone; ``source_only``: source labels alone;
- ``target_upper``: 600 target labels (an upper bound no small hospital has).

Every method runs the same number of steps with a labelled batch of 40 (``target_only`` uses all
20 labels each step), Adam with a one-cycle learning rate, and a fixed seed. With the same
thread count on the same machine a run repeats bit for bit.

Usage: ``python train.py [--method dann] [--seed 0] [--steps 600]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from kgrid_py.training.brain_phantoms import PhantomSet, generate

__all__ = ["METHODS", "BrainData", "TrainConfig", "accuracy", "evaluate_methods", "load_data", "train"]

METHODS = ("dann", "target_only", "source_only", "pooled", "target_upper")


def _sibling(name: str) -> ModuleType:
    """Import a module next to this file under a unique name (the KO folder is no package)."""
    module_name = f"brain_sex_dann_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


model = _sibling("model")


@dataclass(frozen=True)
class TrainConfig:
    """One budget for every method (the reference design's settings)."""

    steps: int = 600
    source_batch: int = 32
    target_batch: int = 8
    unlabelled_batch: int = 32
    max_lr: float = 1e-3
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class BrainData:
    source: PhantomSet
    target_labelled: PhantomSet
    target_unlabelled: PhantomSet
    target_test: PhantomSet
    target_upper: PhantomSet | None = None


def load_data(test_n: int | None = None, upper: bool = True) -> BrainData:
    """Generate the fixed splits (about 25 s for all of them on one core)."""
    return BrainData(
        source=generate("source_train"),
        target_labelled=generate("target_labelled"),
        target_unlabelled=generate("target_unlabelled"),
        target_test=generate("target_test", test_n),
        target_upper=generate("target_upper") if upper else None,
    )


class _Batches:
    """Endless shuffled batches of indices, one permutation per epoch, from a seeded rng."""

    def __init__(self, n: int, size: int, rng: np.random.Generator) -> None:
        self.n, self.size, self.rng = n, min(size, n), rng
        self.order = rng.permutation(n)
        self.pos = 0

    def next(self) -> np.ndarray:
        if self.pos + self.size > self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        batch = self.order[self.pos : self.pos + self.size]
        self.pos += self.size
        return batch


def _labelled_pools(method: str, data: BrainData, config: TrainConfig) -> list[tuple[PhantomSet, int]]:
    labelled = config.source_batch + config.target_batch
    if method in ("dann", "pooled"):
        return [(data.source, config.source_batch), (data.target_labelled, config.target_batch)]
    if method == "source_only":
        return [(data.source, labelled)]
    if method == "target_only":
        return [(data.target_labelled, labelled)]
    if method == "target_upper":
        if data.target_upper is None:
            raise ValueError("target_upper needs data loaded with upper=True")
        return [(data.target_upper, labelled)]
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def train(method: str, data: BrainData, seed: int = 0, config: TrainConfig | None = None) -> nn.Module:
    """Train one method from scratch and return the network in eval mode."""
    config = config or TrainConfig()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = model.BrainSexNet()
    discriminator = model.DomainDiscriminator()
    adversarial = method == "dann"
    params = list(net.parameters()) + (list(discriminator.parameters()) if adversarial else [])
    optimizer = torch.optim.Adam(params, lr=config.max_lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.max_lr, total_steps=config.steps)
    pools = [(ps, _Batches(len(ps), size, rng)) for ps, size in _labelled_pools(method, data, config)]
    unlabelled = _Batches(len(data.target_unlabelled), config.unlabelled_batch, rng)
    cross_entropy, bce = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()
    net.train()
    discriminator.train()
    for step in range(config.steps):
        parts, labels, domains = [], [], []
        for ps, batches in pools:
            idx = batches.next()
            parts.append(ps.images[idx])
            labels.append(ps.labels[idx])
            domains.append(np.full(len(idx), ps.site == "target", dtype=np.float32))
        n_labelled = sum(len(p) for p in parts)
        if adversarial:
            idx = unlabelled.next()
            parts.append(data.target_unlabelled.images[idx])
            domains.append(np.ones(len(idx), dtype=np.float32))
        x = torch.from_numpy(np.concatenate(parts))
        y = torch.from_numpy(np.concatenate(labels))
        features = net.features(x)
        loss = cross_entropy(net.classifier(features[:n_labelled]), y)
        if adversarial:
            lam = model.grl_lambda(step / config.steps)
            d = torch.from_numpy(np.concatenate(domains))
            loss = loss + bce(discriminator(features, lam), d)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, images: np.ndarray, batch: int = 100) -> np.ndarray:
    """Class probabilities ``[n, 2]`` from a trained network, in eval mode."""
    net.eval()
    out = [
        torch.softmax(net(torch.from_numpy(images[i : i + batch])), dim=1).numpy() for i in range(0, len(images), batch)
    ]
    return np.concatenate(out)


def accuracy(net: nn.Module, ps: PhantomSet) -> float:
    return float((predict(net, ps.images).argmax(axis=1) == ps.labels).mean())


def evaluate_methods(
    data: BrainData, seed: int = 0, methods: tuple[str, ...] = METHODS, config: TrainConfig | None = None
) -> dict[str, float]:
    """Target-test accuracy of every method trained with ``seed``."""
    return {m: accuracy(train(m, data, seed, config), data.target_test) for m in methods}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="dann")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_data(upper=args.method == "target_upper")
    generated = time.perf_counter()
    net = train(args.method, data, args.seed, TrainConfig(steps=args.steps))
    trained = time.perf_counter()
    print(
        f"{args.method} seed {args.seed}: target test accuracy {accuracy(net, data.target_test):.3f} "
        f"(data {generated - start:.0f} s, training {trained - generated:.0f} s)"
    )


if __name__ == "__main__":
    main()
