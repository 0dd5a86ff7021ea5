"""Build the brain-sex KO's model: train DANN with the fixed seed, export ONNX, evaluate.

``build(ko_dir)`` writes ``ko_dir / "model.onnx"`` and returns the evaluation table for the
packager to put into the metadata and the model card. Every method of ``train.METHODS`` is
trained with the same seed and scored on the 400-subject target test set; the exported graph is
scored again through ONNX Runtime so the table describes the file that ships.

Usage: ``python build.py [KO_DIR]`` (default: the folder above this one). About 7 minutes on
one core: data 45 s, DANN 2.5 min, the four comparison methods 3.5 min.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

__all__ = ["SEED", "build"]

SEED = 0
THREADS = 1  # results repeat bit for bit with the same thread count on the same machine


def _sibling(name: str) -> ModuleType:
    """Import a module next to this file under a unique name (the KO folder is no package)."""
    module_name = f"brain_sex_dann_{name}"
    if module_name not in sys.modules:
        path = Path(__file__).with_name(f"{name}.py")
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


train = _sibling("train")
model = _sibling("model")


def _onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"image": images[i : i + 100]})[0] for i in range(0, len(images), 100)])


def build(ko_dir: Path, seed: int = SEED) -> dict[str, Any]:
    """Train, export ``model.onnx`` into ``ko_dir`` and return the evaluation table."""
    torch.set_num_threads(THREADS)
    ko_dir = Path(ko_dir)
    config = train.TrainConfig()
    start = time.perf_counter()
    data = train.load_data()
    accuracies: dict[str, float] = {}
    seconds: dict[str, float] = {}
    onnx_accuracy = float("nan")
    for method in train.METHODS:
        began = time.perf_counter()
        net = train.train(method, data, seed, config)
        seconds[method] = round(time.perf_counter() - began, 1)
        accuracies[method] = train.accuracy(net, data.target_test)
        if method == "dann":
            path = ko_dir / "model.onnx"
            model.export_onnx(net, path)
            probabilities = _onnx_probabilities(path, data.target_test.images)
            onnx_accuracy = float((probabilities.argmax(axis=1) == data.target_test.labels).mean())
    return {
        "seed": seed,
        "steps": config.steps,
        "target_test_n": len(data.target_test),
        "target_test_accuracy": accuracies,
        "onnx_target_test_accuracy": onnx_accuracy,
        "training_seconds": seconds,
        "total_seconds": round(time.perf_counter() - start, 1),
        "threads": THREADS,
        "parameters": sum(p.numel() for p in model.BrainSexNet().parameters()),
    }


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    print(json.dumps(build(target), indent=2))
