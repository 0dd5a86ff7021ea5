"""Write a recalibrated KO version: a complete, sealed folder that passes ``kgrid validate``.

From the parent folder: the updated ONNX (:func:`~kgrid_py.learning.graph_update.update_graph`),
metadata with the new version, status ``draft``, and a lineage record appended; the model card
with an "Updates" section; test vectors regenerated; ``service.yaml`` and digests sealed. ``src/``
is not copied: it builds the parent's graph, not this one (provenance says so). The parent folder
is never written. The new vectors' expected values are the parent's own answers with the update
applied in numpy (:meth:`Update.apply`), an implementation independent of the ONNX nodes; outputs
the update does not compute (a threshold flag) are dropped from a vector's expectations.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import semantic_version

from kgrid_py.curation.build import seal
from kgrid_py.errors import InputError, InvalidKO
from kgrid_py.ko import METADATA_FILE, KnowledgeObject
from kgrid_py.learning.graph_update import update_graph
from kgrid_py.learning.recalibration import Evidence, RecalibrationError, Update

__all__ = ["data_digest", "data_summary", "minor_bump", "write_version"]


def minor_bump(version: str) -> str:
    """1.0.0 -> 1.1.0: a recalibration keeps every input and output, so it is a MINOR version."""
    v = semantic_version.Version(version)
    return str(semantic_version.Version(major=v.major, minor=v.minor + 1, patch=0))


def data_digest(evidence: Evidence) -> str:
    """sha256 over the exact float64/int64 arrays used (rows in their order), for the lineage."""
    h = hashlib.sha256()
    for name in evidence.outputs:
        h.update(name.encode() + b"\0" + np.ascontiguousarray(evidence.predicted[name], np.float64).tobytes())
    h.update(np.ascontiguousarray(evidence.time, np.float64).tobytes())
    h.update(np.ascontiguousarray(evidence.cause, np.int64).tobytes())
    h.update("\0".join(map(str, evidence.site)).encode())
    return h.hexdigest()


def data_summary(evidence: Evidence) -> list[dict[str, Any]]:
    """Per site: n, outcome events, competing events, censored, follow-up (days) and call dates."""
    out = []
    for site in sorted(set(map(str, evidence.site))):
        rows = evidence.site == site
        entry: dict[str, Any] = {
            "site": site,
            "n": int(rows.sum()),
            "events": int(np.sum(evidence.cause[rows] == 1)),
            "competing_events": int(np.sum(evidence.cause[rows] == 2)),
            "censored": int(np.sum(evidence.cause[rows] == 0)),
            "follow_up_days_median": float(np.median(evidence.time[rows])),
            "follow_up_days_max": float(np.max(evidence.time[rows])),
        }
        if evidence.day is not None:
            days = evidence.day[rows]
            entry["call_dates"] = [_iso(days.min()), _iso(days.max())]
        out.append(entry)
    return out


def _iso(day: float) -> str:
    return str(np.datetime64(int(day), "D"))


def write_version(
    parent: KnowledgeObject,
    function: str,
    update: Update,
    lineage: dict[str, Any],
    out: Path,
    outputs: list[str],
    version: str | None = None,
) -> Path:
    """Write the updated version of ``parent`` into the empty or new folder ``out``; returns ``out``.

    ``lineage`` holds ``reason`` and the record (estimates, data, performance, rounds...). The
    folder is checked by loading it and running its vectors; on any failure it is removed.
    """
    version = version or minor_bump(parent.version)
    wanted = semantic_version.Version(version)
    base = semantic_version.Version(parent.version)
    if not (wanted.major == base.major and wanted > base):
        raise RecalibrationError(
            f"version {version} must be a higher {base.major}.x version than {parent.version} (a MINOR bump)"
        )
    if out.exists() and any(out.iterdir()):
        raise RecalibrationError(f"{out} exists and is not empty; the new version needs an empty folder")
    spec = parent.function(function)
    check_outputs(parent, function, outputs)
    try:
        _write(parent, spec.model, function, update, outputs, lineage, out, version)
        ko = KnowledgeObject.from_path(out)
        failed = [o for o in ko.test() if not o.passed]
        if failed:
            raise InvalidKO(f"{ko.ref}: {len(failed)} regenerated vector(s) failed: {failed[0].detail}")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def check_outputs(parent: KnowledgeObject, function: str, outputs: list[str]) -> None:
    """Refuse outputs the graph update cannot rewrite (not a plain graph output)."""
    spec = parent.function(function)
    for name in outputs:
        output = next((o for o in spec.outputs if o.name == name), None)
        if output is None or output.graph_name != name or output.select is not None or output.argmax:
            raise RecalibrationError(f"{function}: output {name!r} is not a plain graph output and cannot be updated")


def _write(
    parent: KnowledgeObject,
    model_file: str,
    function: str,
    update: Update,
    outputs: list[str],
    lineage: dict[str, Any],
    out: Path,
    version: str,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    raw = json.loads(json.dumps(parent.raw_metadata))
    files = [f for f in raw["files"] if f.get("role") != "source" and f["path"] != "service.yaml"]
    for entry in files:
        (out / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(parent.path / entry["path"], out / entry["path"])
    (out / model_file).write_bytes(update_graph((parent.path / model_file).read_bytes(), update, outputs))
    ko_id = raw["dc:identifier"]
    raw.update({"@id": f"{ko_id}/{version}", "dc:version": version, "status": "draft", "files": files})
    raw.pop("successor", None)
    raw["provenance"] = {
        "parent_version": parent.version,
        "built_with": "kgrid recalibrate",
        "notes": (
            f"{function}: the graph of {parent.ref} with {update.method} recalibration applied to "
            f"{', '.join(outputs)} as post-processing nodes (kgrid_py.learning.graph_update); the parent's "
            "src/ builds the parent's graph, so it is not copied."
        ),
    }
    record = {"function": function, "outputs": outputs, **update.as_record(), **lineage.get("record", {})}
    entry = {
        "parent": parent.ref,
        "parent_digest": parent.content_digest,
        "method": update.method,
        "reason": lineage["reason"],
        "record": record,
    }
    raw["lineage"] = [*(raw.get("lineage") or []), entry]
    (out / METADATA_FILE).write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if parent.metadata.tests:
        _regenerate_vectors(parent, function, update, outputs, out / parent.metadata.tests)
    card = out / "README.md"
    if card.exists():
        card.write_text(card.read_text(encoding="utf-8").rstrip() + "\n\n" + _updates_section(entry), encoding="utf-8")
    seal(out)


def _regenerate_vectors(parent: KnowledgeObject, function: str, update: Update, outputs: list[str], path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    vectors = []
    for vector in document["vectors"]:
        if vector.get("function") != function or vector.get("expected") is None:
            vectors.append(vector)
            continue
        try:
            answer = parent.call(function, vector["input"]).result
        except InputError:
            continue
        expected = {
            name: float(update.apply(name, np.array([answer[name]]))[0])
            for name in (vector["expected"] or answer)
            if name in outputs
        }
        if not expected:
            continue
        vectors.append(
            {
                **vector,
                "expected": expected,
                "rel_tol": 1e-9,
                # graph vs numpy differ by ~1e-17 at risks near 1e-8 (a logistic slope update): absolute
                # slack far below any clinical difference, so such a vector does not fail on rounding
                "abs_tol": 1e-14,
                "source": (
                    f"{parent.ref}'s answer (checked by its vector {vector['name']!r}) with the update "
                    "applied in numpy (kgrid_py.learning.recalibration.Update.apply)"
                ),
            }
        )
    document["vectors"] = vectors
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _updates_section(entry: dict[str, Any]) -> str:
    record = entry["record"]
    lines = [
        "## Updates",
        "",
        f"**{record.get('version_label', 'This version')}** was derived from `{entry['parent']}` "
        f"(content digest `{entry['parent_digest']}`) by **{entry['method']}** recalibration of "
        f"`{record['function']}` ({', '.join(record['outputs'])}). Why: {entry['reason']}",
        "",
        "| parameter | estimate | standard error |",
        "|---|---|---|",
    ]
    for name, value in record["parameters"].items():
        lines.append(f"| {name} | {value:.6g} | {record['standard_errors'][name]:.3g} |")
    lines += ["", "Data used (per site):", "", "| site | n | events | competing | censored |", "|---|---|---|---|---|"]
    for site in record.get("data", []):
        lines.append(
            f"| {site['site']} | {site['n']} | {site['events']} | {site['competing_events']} | {site['censored']} |"
        )
    if "data_digest" in record:
        lines += ["", f"Data digest: `{record['data_digest']}`."]
    for name, values in (record.get("performance") or {}).items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, float)))
    lines += [
        "",
        "The update is applied to the parent's outputs (time to event: cloglog p' = a_h + b·cloglog p; "
        "logistic: logit p' = a + b·logit p); inputs, outputs and units are unchanged. "
        "The full record is the `lineage` entry of `metadata.json`.",
        "",
    ]
    return "\n".join(lines)
