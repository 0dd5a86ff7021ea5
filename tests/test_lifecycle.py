"""Lifecycle: deprecate, retire, name a successor; every change audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from demo_ko import write_demo_ko

from kgrid_py.curation.archive import pack
from kgrid_py.curation.audit import read_audit
from kgrid_py.curation.errors import LifecycleError, http_status
from kgrid_py.curation.lifecycle import lifecycle_info, set_status
from kgrid_py.curation.publish import publish_archive
from kgrid_py.errors import NotFound
from kgrid_py.shelf import Shelf


@pytest.fixture
def shelf(tmp_path: Path) -> Path:
    shelf = tmp_path / "shelf"
    for version in ("1.0.0", "1.1.0"):
        publish_archive(pack(write_demo_ko(tmp_path / "src", version)), shelf, actor="alice")
    return shelf


def test_deprecate_keeps_serving_with_headers(shelf: Path) -> None:
    change = set_status(shelf, "demo-bmi@1.0.0", "deprecated", "alice", successor="demo-bmi@1.1.0", sunset="2027-06-30")
    assert (change.previous, change.status, change.changed) == ("active", "deprecated", True)
    assert Shelf(shelf).resolve("demo-bmi@1.0.0").status == "deprecated"
    info = lifecycle_info(shelf, "demo-bmi", "1.0.0")
    headers = info.http_headers()
    assert headers["Deprecation"].startswith("@") and headers["Sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
    assert headers["Link"] == '<demo-bmi@1.1.0>; rel="successor-version"'
    record = read_audit(shelf / ".kgrid" / "audit.jsonl")[-1]
    assert record["action"] == "status" and record["actor"] == "alice" and record["previous"] == "active"
    assert len(record["digest"]) == 64


def test_retire_with_successor(shelf: Path) -> None:
    set_status(shelf, "demo-bmi@1.0.0", "retired", "alice", successor="demo-bmi@1.1.0")
    entry = Shelf(shelf).resolve("demo-bmi@1.0.0")
    assert (entry.status, entry.successor) == ("retired", "demo-bmi@1.1.0")
    assert Shelf(shelf).resolve("demo-bmi@1").version == "1.1.0"
    raw = json.loads((entry.path / "metadata.json").read_text())
    assert raw["status"] == "retired"


def test_retired_is_final(shelf: Path) -> None:
    set_status(shelf, "demo-bmi@1.0.0", "retired", "alice")
    with pytest.raises(LifecycleError, match="is retired; it cannot become active") as caught:
        set_status(shelf, "demo-bmi@1.0.0", "active", "mallory")
    assert http_status(caught.value) == 409
    assert read_audit(shelf / ".kgrid" / "audit.jsonl")[-1]["outcome"] == "refused"


def test_same_status_again_is_a_no_op(shelf: Path) -> None:
    set_status(shelf, "demo-bmi@1.0.0", "deprecated", "alice")
    assert not set_status(shelf, "demo-bmi@1.0.0", "deprecated", "alice").changed


@pytest.mark.parametrize(
    ("ref", "status", "successor", "error", "message"),
    [
        ("demo-bmi@1", "deprecated", None, LifecycleError, "exact version"),
        ("demo-bmi@1.0.0", "published", None, LifecycleError, "status must be one of"),
        ("demo-bmi@1.0.0", "retired", "demo-bmi@9.9.9", LifecycleError, "not on the shelf"),
        ("demo-bmi@1.0.0", "retired", "demo-bmi@1.0.0", LifecycleError, "its own successor"),
        ("demo-bmi@3.0.0", "retired", None, NotFound, "no version 3.0.0"),
    ],
    ids=["range", "unknown-status", "missing-successor", "self-successor", "missing-version"],
)
def test_refused_changes(
    shelf: Path, ref: str, status: str, successor: str | None, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        set_status(shelf, ref, status, "alice", successor=successor)
    assert Shelf(shelf).resolve("demo-bmi@1.0.0").status == "active"


def test_bad_sunset_date(shelf: Path) -> None:
    with pytest.raises(LifecycleError, match="not an ISO date"):
        set_status(shelf, "demo-bmi@1.0.0", "deprecated", "alice", sunset="next year")
