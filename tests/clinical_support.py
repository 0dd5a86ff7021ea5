"""Helpers shared by the KO tests: import a KO's source file, open a bare ORT session."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kgrid_py.ko import read_metadata


def import_source(path: Path, name: str | None = None) -> ModuleType:
    """Import a KO source file (KO folders are not packages), once per path or given module name."""
    name = name or "_test_clinical_" + "".join(c if c.isalnum() else "_" for c in str(path))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def raw_session(path: Path) -> Any:
    """A bare ONNX Runtime session, single-threaded, bypassing kgrid_py."""
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_inputs(ko_dir: Path, function: str) -> list[str]:
    """The graph inputs of ``function``, in declaration order (the torch module's argument order)."""
    spec = read_metadata(ko_dir)[1].function(function)
    return [f.graph_name for f in spec.inputs]
