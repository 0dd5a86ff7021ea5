"""Publishing into a local shelf: checks first, immutable versions, atomic writes, an audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from archives import entries_of, rebuild, refuse, snapshot, with_metadata
from demo_ko import write_demo_ko

from kgrid_py.curation.archive import pack
from kgrid_py.curation.audit import read_audit
from kgrid_py.curation.build import seal
from kgrid_py.curation.errors import (
    ArchiveRejected,
    ArchiveTooLarge,
    Forbidden,
    IncompatibleChange,
    LifecycleError,
    RemoteError,
    SignatureMissing,
    Unauthorized,
    UntrustedSignature,
    VectorsFailed,
    VersionConflict,
    http_status,
)
from kgrid_py.curation.lifecycle import set_status
from kgrid_py.curation.publish import PublishPolicy, publish_archive
from kgrid_py.errors import IntegrityError, InvalidKO, NotFound
from kgrid_py.shelf import Shelf


def make_ko(
    root: Path, version: str = "1.0.0", status: str = "draft", edit: Callable[[dict[str, Any]], None] | None = None
) -> Path:
    path = write_demo_ko(root, version, status)
    if edit is not None:
        raw = json.loads((path / "metadata.json").read_text())
        edit(raw)
        (path / "metadata.json").write_text(json.dumps(raw, indent=2))
        seal(path)
    return path


@pytest.fixture
def shelf(tmp_path: Path) -> Path:
    return tmp_path / "hospital-shelf"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return tmp_path / "curator"


def test_publish_a_new_version(src: Path, shelf: Path) -> None:
    data = pack(make_ko(src))
    outcome = publish_archive(data, shelf, actor="alice")
    assert (outcome.ref, outcome.changed, outcome.http_status, outcome.status) == (
        "demo-bmi@1.0.0",
        True,
        201,
        "active",
    )
    assert outcome.vectors_passed == 6
    ko = Shelf(shelf).load("demo-bmi@1")
    assert ko.status == "active" and all(o.passed for o in ko.test())
    (record,) = read_audit(shelf / ".kgrid" / "audit.jsonl")
    assert record["actor"] == "alice" and record["action"] == "publish" and record["outcome"] == "published"
    assert record["ref"] == "demo-bmi@1.0.0" and len(record["digest"]) == 64 and record["time"].endswith("Z")
    assert list((shelf / ".kgrid" / "staging").iterdir()) == []


def test_publish_the_identical_archive_again_changes_nothing(src: Path, shelf: Path) -> None:
    data = pack(make_ko(src))
    publish_archive(data, shelf, actor="alice")
    before = snapshot(shelf)
    outcome = publish_archive(data, shelf, actor="bob")
    assert (outcome.changed, outcome.http_status) == (False, 200)
    assert snapshot(shelf) == before
    assert read_audit(shelf / ".kgrid" / "audit.jsonl")[-1]["outcome"] == "unchanged"


def test_same_version_with_different_content_is_a_conflict(src: Path, shelf: Path) -> None:
    path = make_ko(src)
    publish_archive(pack(path), shelf, actor="alice")
    before = snapshot(shelf)
    (path / "README.md").write_text("# Demo BMI\n\nQuietly changed.\n")
    seal(path)
    with pytest.raises(VersionConflict, match="immutable") as caught:
        publish_archive(pack(path), shelf, actor="mallory")
    assert http_status(caught.value) == 409
    assert snapshot(shelf) == before


def test_republishing_a_deprecated_version_keeps_it_deprecated(src: Path, shelf: Path) -> None:
    data = pack(make_ko(src))
    publish_archive(data, shelf, actor="alice")
    set_status(shelf, "demo-bmi@1.0.0", "deprecated", actor="alice")
    outcome = publish_archive(data, shelf, actor="alice")
    assert not outcome.changed and outcome.status == "deprecated"


def test_failing_vectors_are_refused(src: Path, tmp_path: Path) -> None:
    path = make_ko(src)
    vectors = json.loads((path / "tests.json").read_text())
    vectors["vectors"][0]["expected"]["bmi"] = 99.0
    (path / "tests.json").write_text(json.dumps(vectors))
    seal(path)
    exc = refuse(pack(path), tmp_path, VectorsFailed, "1 test vector")
    assert http_status(exc) == 422


def test_a_ko_without_vectors_is_refused(src: Path, tmp_path: Path) -> None:
    def drop_tests(raw: dict[str, Any]) -> None:
        raw["tests"] = None
        raw["files"] = [f for f in raw["files"] if f["path"] != "tests.json"]

    path = make_ko(src, edit=drop_tests)
    (path / "tests.json").unlink()
    refuse(pack(path), tmp_path, VectorsFailed, "no test vectors")


def test_invalid_metadata_is_refused(src: Path, tmp_path: Path) -> None:
    contents = entries_of(pack(make_ko(src)))
    exc = refuse(rebuild(with_metadata(contents, status="published")), tmp_path, InvalidKO, "status")
    assert http_status(exc) == 422


def test_a_listed_file_missing_from_the_archive_is_refused(src: Path, tmp_path: Path) -> None:
    contents = entries_of(pack(make_ko(src)))
    del contents["README.md"]
    refuse(rebuild(contents), tmp_path, IntegrityError, "README.md: listed in metadata but missing")


def _unit_on_adjusted(raw: dict[str, Any]) -> None:
    raw["functions"][0]["outputs"][1]["unit"] = "kg/m2"


def test_breaking_change_needs_a_new_major(src: Path, shelf: Path) -> None:
    publish_archive(pack(make_ko(src)), shelf, actor="alice")
    minor = pack(make_ko(src, "1.1.0", edit=_unit_on_adjusted))
    with pytest.raises(
        IncompatibleChange, match=r"output 'adjusted' unit changed.*needs a new major version \(2\.0\.0"
    ):
        publish_archive(minor, shelf, actor="alice")
    assert [e.version for e in Shelf(shelf).entries()] == ["1.0.0"]
    outcome = publish_archive(pack(make_ko(src, "2.0.0", edit=_unit_on_adjusted)), shelf, actor="alice")
    assert outcome.changed and outcome.changes == ["bmi: output 'adjusted' unit changed from None to 'kg/m2'"]


def test_compatible_minor_is_accepted(src: Path, shelf: Path) -> None:
    publish_archive(pack(make_ko(src)), shelf, actor="alice")

    def describe(raw: dict[str, Any]) -> None:
        raw["dc:description"] = "A clearer description."

    outcome = publish_archive(pack(make_ko(src, "1.1.0", edit=describe)), shelf, actor="alice")
    assert outcome.changed and outcome.changes == []
    assert Shelf(shelf).resolve("demo-bmi@1").version == "1.1.0"


def test_publish_without_compat_or_vector_checks_when_the_policy_says_so(src: Path, shelf: Path) -> None:
    publish_archive(pack(make_ko(src)), shelf, actor="alice")
    policy = PublishPolicy(check_compatibility=False, run_vectors=False, activate=False)
    outcome = publish_archive(pack(make_ko(src, "1.1.0", edit=_unit_on_adjusted)), shelf, policy, actor="alice")
    assert outcome.changed and outcome.status == "draft" and outcome.vectors_passed == 0


def test_a_failure_at_the_last_step_leaves_nothing_half_written(
    src: Path, shelf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_archive(pack(make_ko(src)), shelf, actor="alice")
    before = snapshot(shelf)

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("kgrid_py.curation.publish.os.rename", crash)
    with pytest.raises(OSError, match="disk full"):
        publish_archive(pack(make_ko(src, "1.1.0")), shelf, actor="alice")
    assert snapshot(shelf) == before
    assert [e.version for e in Shelf(shelf).entries()] == ["1.0.0"]


def test_concurrent_publications_of_one_version(src: Path, shelf: Path) -> None:
    data = pack(make_ko(src))
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: publish_archive(data, shelf, actor="alice"), range(4)))
    assert sorted(o.changed for o in outcomes) == [False, False, False, True]
    assert [e.version for e in Shelf(shelf).entries()] == ["1.0.0"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ArchiveTooLarge("x"), 413),
        (ArchiveRejected("x"), 422),
        (SignatureMissing("x"), 403),
        (UntrustedSignature("x"), 403),
        (VersionConflict("x"), 409),
        (IncompatibleChange("x"), 422),
        (VectorsFailed("x"), 422),
        (LifecycleError("x"), 409),
        (Unauthorized("x"), 401),
        (Forbidden("x"), 403),
        (RemoteError("x"), 502),
        (InvalidKO("x"), 422),
        (NotFound("x"), 404),
        (RuntimeError("x"), 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_http_status_table(error: Exception, status: int) -> None:
    assert http_status(error) == status
