"""The brain-sex network: what ships in the ONNX graph, and what only training uses.

Shipped: per-sample standardisation -> 3D CNN encoder -> classifier -> softmax. Training adds a
domain discriminator behind a gradient-reversal layer (DANN, Ganin et al. 2016), so the encoder
learns features that do not tell the scanner sites apart; it never enters the graph.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "INPUT_SHAPE",
    "BrainSexNet",
    "DomainDiscriminator",
    "Encoder",
    "ExportedClassifier",
    "Standardize",
    "export_onnx",
    "grl_lambda",
]

INPUT_SHAPE = (1, 32, 40, 32)
FEATURES = 64
_FLAT = 64 * 4 * 5 * 4


class Standardize(nn.Module):
    """Z-score each volume on its own, so a scanner's gain and offset do not matter."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
        centred = x - mean
        variance = (centred * centred).mean(dim=(1, 2, 3, 4), keepdim=True)
        return centred / torch.sqrt(variance + self.eps)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel_size=4, stride=2, padding=1),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    """32x40x32 -> 4x5x4 by three strided convolutions, then a 64-feature vector."""

    def __init__(self) -> None:
        super().__init__()
        # Flatten + Linear rather than adaptive pooling: an adaptive pool fails ONNX export.
        self.conv = nn.Sequential(_block(1, 16), _block(16, 32), _block(32, 64))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(_FLAT, FEATURES), nn.ReLU(inplace=True), nn.Dropout(0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


class BrainSexNet(nn.Module):
    """Standardize -> encoder -> classifier; ``forward`` returns logits (0 female, 1 male)."""

    def __init__(self) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.encoder = Encoder()
        self.classifier = nn.Linear(FEATURES, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.standardize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ExportedClassifier(nn.Module):
    """The served graph: ``BrainSexNet`` plus softmax, returning class probabilities."""

    def __init__(self, net: BrainSexNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image), dim=1)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


class DomainDiscriminator(nn.Module):
    """Predicts the site from features; the reversed gradient pushes the encoder to hide it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(inplace=True), nn.Linear(64, 1))

    def forward(self, features: torch.Tensor, lam: float) -> torch.Tensor:
        return self.net(_ReverseGradient.apply(features, lam)).squeeze(1)


def grl_lambda(progress: float) -> float:
    """Ganin's schedule: 0 at the start, rising to ~1, so early noisy features are not punished."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def export_onnx(net: BrainSexNet, path: Path) -> None:
    """Write the served graph: input ``image`` [batch,1,32,40,32], output ``probabilities``."""
    module = ExportedClassifier(net).eval()
    example = torch.zeros((2, *INPUT_SHAPE), dtype=torch.float32)
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose: it writes one self-contained file.
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(module, example, path)


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
