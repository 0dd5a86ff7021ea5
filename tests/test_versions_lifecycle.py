"""Retired means retired everywhere, deprecated warns, sunsets are UTC, build metadata is no version."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from demo_ko import write_demo_ko

import kgrid_py
from kgrid_py.cli import cli
from kgrid_py.curation.archive import pack
from kgrid_py.curation.audit import read_audit
from kgrid_py.curation.errors import IncompatibleChange, InvalidDate, VersionConflict, http_status
from kgrid_py.curation.lifecycle import lifecycle_info, set_status
from kgrid_py.curation.publish import publish_archive
from kgrid_py.errors import NotFound, RetiredVersion
from kgrid_py.shelf import Shelf

GOOD = {"weight": 70, "height": 1.75, "sex": "female", "age": 40}


def _archive(root: Path, version: str, edit: Any = None) -> bytes:
    path = write_demo_ko(root / f"src-{version}", version, "draft")
    if edit is not None:
        raw = json.loads((path / "metadata.json").read_text())
        edit(raw)
        (path / "metadata.json").write_text(json.dumps(raw))
        from kgrid_py.curation.build import seal

        seal(path)
    return pack(path)


@pytest.fixture
def shelf(tmp_path: Path) -> Path:
    """demo-bmi 1.0.0 (retired, successor 1.1.0), 1.1.0 (deprecated, successor 1.2.0), 1.2.0 (active)."""
    root = tmp_path / "shelf"
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        publish_archive(_archive(tmp_path, version), root, actor="alice")
    set_status(root, "demo-bmi@1.1.0", "deprecated", "ops", successor="demo-bmi@1.2.0", sunset="2027-06-30")
    set_status(root, "demo-bmi@1.0.0", "retired", "ops", successor="demo-bmi@1.2.0")
    return root


# -- retired -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(lambda s: kgrid_py.load("demo-bmi@1.0.0", shelf=s), id="load-exact"),
        pytest.param(lambda s: Shelf(s).load("demo-bmi@1.0.0"), id="shelf-load"),
        pytest.param(lambda s: kgrid_py.load(s / "demo-bmi" / "1.0.0"), id="load-path"),
    ],
)
def test_a_retired_version_is_refused_naming_its_successor(shelf: Path, how: Any) -> None:
    with pytest.raises(RetiredVersion, match=r"demo-bmi@1\.0\.0 is retired.*demo-bmi@1\.2\.0") as caught:
        how(shelf)
    assert caught.value.successor == "demo-bmi@1.2.0" and isinstance(caught.value, LookupError)


def test_a_retired_version_runs_when_asked_explicitly(shelf: Path) -> None:
    ko = kgrid_py.load("demo-bmi@1.0.0", shelf=shelf, allow_retired=True)
    assert ko.status == "retired" and ko.call("bmi", GOOD).result["bmi"] == pytest.approx(70 / 1.75**2)
    assert Shelf(shelf).load("demo-bmi@1.0.0", allow_retired=True).version == "1.0.0"


def test_a_reference_without_an_exact_version_never_resolves_to_a_retired_one(tmp_path: Path) -> None:
    root = tmp_path / "shelf"
    publish_archive(_archive(tmp_path, "1.0.0"), root, actor="alice")
    publish_archive(_archive(tmp_path, "2.0.0"), root, actor="alice")
    set_status(root, "demo-bmi@2.0.0", "retired", "ops", successor="demo-bmi@1.0.0")
    for ref in ("demo-bmi", "demo-bmi@*", "demo-bmi@>=1"):
        assert kgrid_py.load(ref, shelf=root).version == "1.0.0"
    with pytest.raises(NotFound):
        kgrid_py.load("demo-bmi@2", shelf=root)


def test_kgrid_run_refuses_a_retired_version_unless_allowed(shelf: Path) -> None:
    runner = CliRunner()
    args = ["run", "demo-bmi@1.0.0", "bmi", "--input", json.dumps(GOOD), "--shelf", str(shelf)]
    refused = runner.invoke(cli, args)
    assert refused.exit_code == 1 and "retired" in refused.output and "demo-bmi@1.2.0" in refused.output
    allowed = runner.invoke(cli, [*args, "--allow-retired"])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["info"]["version"] == "1.0.0"
    assert "retired" in allowed.stderr


# -- deprecated --------------------------------------------------------------------------------------


def test_a_deprecated_version_warns_on_load_and_in_every_result(shelf: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"demo-bmi@1\.1\.0 is deprecated.*demo-bmi@1\.2\.0.*2027-06-30"):
        ko = kgrid_py.load("demo-bmi@1.1.0", shelf=shelf)
    (warning,) = [w for w in ko.call("bmi", GOOD).warnings if "deprecated" in w]
    assert "demo-bmi@1.2.0" in warning and "2027-06-30" in warning
    batch = ko.call_batch("bmi", {k: [v, v] for k, v in GOOD.items()})
    assert all(any("deprecated" in w for w in row) for row in batch.warnings)


def test_an_active_version_has_no_lifecycle_warning(shelf: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        ko = kgrid_py.load("demo-bmi@1.2.0", shelf=shelf)
    assert not [w for w in ko.call("bmi", GOOD).warnings if "deprecated" in w]


def test_kgrid_run_shows_the_deprecation(shelf: Path) -> None:
    args = ["run", "demo-bmi@1.1.0", "bmi", "--input", json.dumps(GOOD), "--shelf", str(shelf)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "deprecated" in result.stderr
    assert any("demo-bmi@1.2.0" in w for w in json.loads(result.stdout)["info"]["warnings"])


# -- sunsets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored", "header"),
    [
        pytest.param("2027-06-30T00:00:00+02:00", "2027-06-29T22:00:00Z", "Tue, 29 Jun 2027 22:00:00 GMT", id="offset"),
        pytest.param("2027-06-30T00:00:00Z", "2027-06-30T00:00:00Z", "Wed, 30 Jun 2027 00:00:00 GMT", id="zulu"),
        pytest.param("2027-06-30T08:30:00", "2027-06-30T08:30:00Z", "Wed, 30 Jun 2027 08:30:00 GMT", id="naive-is-utc"),
        pytest.param("2027-06-30", "2027-06-30", "Wed, 30 Jun 2027 00:00:00 GMT", id="date"),
    ],
)
def test_sunsets_are_stored_in_utc(shelf: Path, given: str, stored: str, header: str) -> None:
    set_status(shelf, "demo-bmi@1.1.0", "deprecated", "ops", sunset=given)
    info = lifecycle_info(shelf, "demo-bmi", "1.1.0")
    assert info.sunset == stored
    assert info.http_headers()["Sunset"] == header


@pytest.mark.parametrize("garbage", ["soon", "2027-13-01", "2027-06-31", "0001-01-01T00:00:00+01:00", "x" * 10_000])
def test_a_bad_sunset_is_a_clear_422(shelf: Path, garbage: str) -> None:
    with pytest.raises(InvalidDate, match="not an ISO date") as caught:
        set_status(shelf, "demo-bmi@1.1.0", "deprecated", "ops", sunset=garbage)
    assert http_status(caught.value) == 422 and len(str(caught.value)) < 300
    assert lifecycle_info(shelf, "demo-bmi", "1.1.0").sunset == "2027-06-30"  # unchanged


def test_an_old_record_with_an_offset_is_read_safely(shelf: Path) -> None:
    record = shelf / ".kgrid" / "lifecycle" / "demo-bmi" / "1.1.0.json"
    record.write_text(json.dumps({"deprecated_at": "2026-01-01T10:00:00+05:00", "sunset": "2027-06-30T00:00:00+02:00"}))
    headers = lifecycle_info(shelf, "demo-bmi", "1.1.0").http_headers()
    assert headers["Sunset"] == "Tue, 29 Jun 2027 22:00:00 GMT"
    assert headers["Deprecation"] == "@1767243600"


# -- semver build metadata ---------------------------------------------------------------------------


def _drop_adjusted(raw: dict[str, Any]) -> None:
    raw["functions"][0]["outputs"] = [o for o in raw["functions"][0]["outputs"] if o["name"] != "adjusted"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("1.0.0", "1.0.0+x", id="build-after-plain"),
        pytest.param("1.0.0+build.1", "1.0.0", id="plain-after-build"),
        pytest.param("1.0.0+a", "1.0.0+b", id="two-builds"),
        pytest.param("1.0.0-rc.1", "1.0.0-rc.1+x", id="prerelease"),
    ],
)
def test_a_version_differing_only_in_build_metadata_is_refused(tmp_path: Path, first: str, second: str) -> None:
    root = tmp_path / "shelf"
    publish_archive(_archive(tmp_path, first), root, actor="alice")
    with pytest.raises(VersionConflict, match="only in build metadata") as caught:
        publish_archive(_archive(tmp_path / "b", second, _drop_adjusted), root, actor="mallory")
    assert http_status(caught.value) == 409
    assert [e.version for e in Shelf(root).versions("demo-bmi")] == [first]
    assert read_audit(root / ".kgrid" / "audit.jsonl")[-1]["outcome"] == "refused"


def test_a_breaking_change_still_needs_a_major_with_build_metadata(tmp_path: Path) -> None:
    root = tmp_path / "shelf"
    publish_archive(_archive(tmp_path, "1.0.0"), root, actor="alice")
    with pytest.raises(IncompatibleChange, match="output 'adjusted' removed"):
        publish_archive(_archive(tmp_path, "1.1.0+x", _drop_adjusted), root, actor="alice")
