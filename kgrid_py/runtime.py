"""ONNX Runtime sessions: one per model file content, created once, shared by every caller.

``InferenceSession.run`` is thread-safe, so a session is shared across threads; its thread pools
are sized explicitly (``KGRID_ORT_INTRA_THREADS``, default 1) so that a server running several
workers, or a batch job beside other work, does not oversubscribe the cores.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kgrid_py.errors import InvalidKO

__all__ = ["ModelSession", "RuntimeSettings", "get_session"]

_ORT_TO_NUMPY = {
    "tensor(double)": np.float64,
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class RuntimeSettings:
    """Thread settings for every ONNX Runtime session this process creates."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1

    @classmethod
    def from_env(cls) -> RuntimeSettings:
        return cls(
            intra_op_threads=int(os.environ.get("KGRID_ORT_INTRA_THREADS", "1")),
            inter_op_threads=int(os.environ.get("KGRID_ORT_INTER_THREADS", "1")),
        )


class ModelSession:
    """An ONNX model ready to run, with its graph inputs' dtypes and its outputs' names."""

    def __init__(self, path: Path, settings: RuntimeSettings) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unexported exception types
            raise InvalidKO(f"{path.name}: ONNX Runtime cannot load the model: {exc}") from None
        self.input_dtypes: dict[str, type] = {}
        for node in self.session.get_inputs():
            if node.type not in _ORT_TO_NUMPY:
                raise InvalidKO(f"{path.name}: graph input {node.name!r} has unsupported type {node.type}")
            self.input_dtypes[node.name] = _ORT_TO_NUMPY[node.type]
        self.input_shapes = {node.name: node.shape for node in self.session.get_inputs()}
        self.output_names = [node.name for node in self.session.get_outputs()]
        self.run = self.session.run


_sessions: dict[tuple[str, RuntimeSettings], ModelSession] = {}
_lock = threading.Lock()


def get_session(path: Path, sha256: str, settings: RuntimeSettings | None = None) -> ModelSession:
    """The shared session for a model file, keyed by its digest (identical files share one)."""
    settings = settings or RuntimeSettings.from_env()
    key = (sha256, settings)
    session = _sessions.get(key)
    if session is None:
        with _lock:
            session = _sessions.get(key)
            if session is None:
                session = _sessions[key] = ModelSession(path, settings)
    return session
