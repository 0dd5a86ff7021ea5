"""``kgrid build``: rebuild a KO's model files from its source, then re-seal its metadata.

A KO's ``src/build.py`` defines ``build(ko_dir: Path) -> dict``; it writes the ONNX file(s) (and
may write test vectors or a model card). Sealing then regenerates ``service.yaml`` and records
the sha256 of every listed file in ``metadata.json``. Building needs torch; loading never does.

``kgrid vectors regenerate`` (:func:`regenerate_vectors`) recomputes the expected values of the
test vectors from the KO's ``src/reference.py``, which defines::

    def expected(function: str, inputs: dict[str, Any]) -> dict[str, Any] | None

``inputs`` are the vector's inputs as the model sees them: every declared input of ``function``,
numbers converted into the input's declared unit (``{"value": 1, "unit": "g/L"}`` arrives as 100
for an input in mg/dL), a missing optional input as its default, enums as their label. It returns
the outputs it can compute (or None to leave the vector alone). Only vectors whose ``source``
begins with ``src/reference.py`` are rewritten, and only the outputs they already list (all it
returns when they list none); vectors from published examples and ``expect_error`` vectors are
never touched. The KO is re-sealed afterwards, since ``tests.json`` changed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kgrid_py.digest import sha256_file
from kgrid_py.errors import InvalidKO
from kgrid_py.ko import METADATA_FILE
from kgrid_py.metadata import FileEntry, FunctionSpec, KOMetadata
from kgrid_py.openapi import service_yaml
from kgrid_py.units import conversion_factor

__all__ = ["REFERENCE_SOURCE", "SERVICE_FILE", "build_ko", "regenerate_vectors", "seal"]

SERVICE_FILE = "service.yaml"
REFERENCE_SOURCE = "src/reference.py"


def build_ko(path: Path) -> dict[str, Any]:
    """Run the KO's own build, then :func:`seal` it. Returns the build's summary."""
    script = path / "src" / "build.py"
    if not script.is_file():
        raise InvalidKO(f"{path}: no src/build.py to build from")
    summary = _with_source(script, lambda module: module.build(path)) or {}
    seal(path)
    return summary


def _with_source(script: Path, use: Callable[[Any], Any]) -> Any:
    """Import a KO source file (its folder on ``sys.path``), call ``use(module)``, then forget it."""
    name = f"_kgrid_src_{abs(hash(script.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))
    try:
        spec.loader.exec_module(module)
        return use(module)
    finally:
        sys.path.remove(str(script.parent))
        for mod in [
            m for m, v in sys.modules.items() if getattr(v, "__file__", None) and str(script.parent) in str(v.__file__)
        ]:
            del sys.modules[mod]


@dataclass(frozen=True)
class Regenerated:
    """What :func:`regenerate_vectors` did: vectors recomputed, of them changed, and left alone."""

    recomputed: int
    changed: list[str]
    kept: int


def regenerate_vectors(path: Path) -> Regenerated:
    """Recompute expected values from ``src/reference.py`` (see the module docstring), then re-seal."""
    path = Path(path)
    script = path / REFERENCE_SOURCE
    raw = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    metadata = KOMetadata.model_validate(raw)
    if metadata.tests is None:
        raise InvalidKO(f"{path}: the metadata names no test-vector file")
    if not script.is_file():
        raise InvalidKO(f"{path}: no {REFERENCE_SOURCE} to compute expected values from")
    tests_file = path / metadata.tests
    document = json.loads(tests_file.read_text(encoding="utf-8"))
    vectors = document.get("vectors") if isinstance(document, dict) else None
    if not isinstance(vectors, list):
        raise InvalidKO(f"{tests_file.name}: expected {{'vectors': [...]}}")

    def recompute(module: Any) -> Regenerated:
        reference = getattr(module, "expected", None)
        if not callable(reference):
            raise InvalidKO(f"{REFERENCE_SOURCE} defines no expected(function, inputs) (see `kgrid vectors --help`)")
        recomputed, kept, changed = 0, 0, []
        for vector in vectors:
            source = str(vector.get("source") or "")
            if vector.get("expected") is None or not source.startswith(REFERENCE_SOURCE):
                kept += 1
                continue
            inputs = _model_inputs(metadata.function(vector["function"]), vector.get("input") or {})
            answer = reference(vector["function"], inputs)
            if answer is None:
                kept += 1
                continue
            wanted = list(vector["expected"]) or list(answer)
            missing = [name for name in wanted if name not in answer]
            if missing:
                raise InvalidKO(f"vector {vector.get('name')!r}: reference.expected() returned no {missing}")
            fresh = {name: _plain(answer[name]) for name in wanted}
            if fresh != vector["expected"]:
                changed.append(str(vector.get("name")))
            vector["expected"] = fresh
            recomputed += 1
        return Regenerated(recomputed, changed, kept)

    report: Regenerated = _with_source(script, recompute)
    tests_file.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    seal(path)
    return report


def _model_inputs(function: FunctionSpec, given: dict[str, Any]) -> dict[str, Any]:
    """A vector's inputs in the declared units, with defaults: what ``reference.expected`` receives."""
    inputs: dict[str, Any] = {}
    for field in function.inputs:
        if field.name not in given:
            if not field.required:
                inputs[field.name] = field.default
            continue
        value = given[field.name]
        if isinstance(value, dict) and "value" in value and "unit" in value and field.unit:
            declared = [(u.unit, u.factor) for u in field.accepted_units]
            value = float(value["value"]) * conversion_factor(str(value["unit"]), field.unit, declared)
        inputs[field.name] = value
    return inputs


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def seal(path: Path) -> KOMetadata:
    """Regenerate ``service.yaml`` and record every listed file's digest in ``metadata.json``."""
    file = path / METADATA_FILE
    raw = json.loads(file.read_text(encoding="utf-8"))
    metadata = KOMetadata.model_validate(raw)
    (path / SERVICE_FILE).write_text(service_yaml(metadata), encoding="utf-8")
    files = [f for f in raw.get("files", []) if f.get("path") != SERVICE_FILE]
    files.append({"path": SERVICE_FILE, "sha256": "0" * 64, "role": "service"})
    for entry in files:
        target = path / entry["path"]
        if not target.is_file():
            raise InvalidKO(f"{path}: metadata lists {entry['path']}, which does not exist")
        entry["sha256"] = sha256_file(target)
        FileEntry.model_validate(entry)
    raw["files"] = sorted(files, key=lambda f: f["path"])
    file.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return KOMetadata.model_validate(raw)
