"""``kgrid build``: rebuild a KO's model files from its source, then re-seal its metadata.

A KO's ``src/build.py`` defines ``build(ko_dir: Path) -> dict``; it writes the ONNX file(s) (and
may write test vectors or a model card). Sealing then regenerates ``service.yaml`` and records
the sha256 of every listed file in ``metadata.json``. Building needs torch; loading never does.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from kgrid_py.digest import sha256_file
from kgrid_py.errors import InvalidKO
from kgrid_py.ko import METADATA_FILE
from kgrid_py.metadata import FileEntry, KOMetadata
from kgrid_py.openapi import service_yaml

__all__ = ["SERVICE_FILE", "build_ko", "seal"]

SERVICE_FILE = "service.yaml"


def build_ko(path: Path) -> dict[str, Any]:
    """Run the KO's own build, then :func:`seal` it. Returns the build's summary."""
    script = path / "src" / "build.py"
    if not script.is_file():
        raise InvalidKO(f"{path}: no src/build.py to build from")
    name = f"_kgrid_build_{abs(hash(script.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))
    try:
        spec.loader.exec_module(module)
        summary = module.build(path) or {}
    finally:
        sys.path.remove(str(script.parent))
        for mod in [
            m for m, v in sys.modules.items() if getattr(v, "__file__", None) and str(script.parent) in str(v.__file__)
        ]:
            del sys.modules[mod]
    seal(path)
    return summary


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
