"""Shelves and references: semver-aware resolution, never lexical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from demo_ko import write_demo_ko

import kgrid_py
from kgrid_py.curation.build import seal
from kgrid_py.shelf import Reference, Shelf


@pytest.fixture
def shelf(tmp_path: Path) -> Path:
    for version, status in [
        ("1.2.0", "active"),
        ("1.9.0", "active"),
        ("1.10.0", "active"),
        ("1.11.0", "draft"),
        ("2.0.0", "deprecated"),
        ("2.1.0-rc.1", "draft"),
        ("0.9.0", "retired"),
    ]:
        write_demo_ko(tmp_path, version, status)
    return tmp_path


@pytest.mark.parametrize(
    ("ref", "version"),
    [
        ("demo-bmi", "1.10.0"),  # highest *active*: 1.10.0 beats 1.9.0 (lexically it would not)
        ("demo-bmi@1", "1.10.0"),
        ("demo-bmi@^1.2", "1.10.0"),
        ("demo-bmi@~1.9", "1.9.0"),
        ("demo-bmi@>=1.0.0 <1.10.0", "1.9.0"),
        ("demo-bmi@1.2.0", "1.2.0"),
        ("demo-bmi@1.11.0", "1.11.0"),  # an exact pin may name a draft
        ("demo-bmi@2", "2.0.0"),  # only a deprecated version matches: it still serves
    ],
)
def test_resolution(shelf: Path, ref: str, version: str) -> None:
    assert Shelf(shelf).resolve(ref).version == version
    assert kgrid_py.load(ref, shelf=shelf).version == version


@pytest.mark.parametrize("ref", ["demo-bmi@3", "demo-bmi@1.3.0", "demo-bmi@0"])
def test_nothing_matches(shelf: Path, ref: str) -> None:
    with pytest.raises(kgrid_py.NotFound, match=r"available: 0\.9\.0 \(retired\), 1\.2\.0"):
        Shelf(shelf).resolve(ref)


def test_unknown_ko_lists_what_exists(shelf: Path) -> None:
    with pytest.raises(kgrid_py.NotFound, match="available: demo-bmi"):
        Shelf(shelf).resolve("kfre")


@pytest.mark.parametrize("ref", ["Demo", "demo-bmi@not-a-range", "@1", "demo bmi"])
def test_invalid_references(ref: str) -> None:
    with pytest.raises(kgrid_py.InvalidReference):
        Reference.parse(ref)


def test_scan_reports_broken_folders_and_keeps_the_rest(shelf: Path) -> None:
    broken = shelf / "broken" / "1.0.0"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text("{")
    entries, problems = Shelf(shelf).scan()
    assert len(entries) == 7
    assert [p.path for p in problems] == [broken]


def test_default_shelf_from_environment(shelf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KGRID_SHELF", str(shelf))
    assert kgrid_py.load("demo-bmi@1.2.0").version == "1.2.0"


def test_missing_shelf(tmp_path: Path) -> None:
    with pytest.raises(kgrid_py.NotFound, match="no shelf"):
        kgrid_py.load("demo-bmi", shelf=tmp_path / "nope")


def test_seal_is_stable(shelf: Path) -> None:
    path = shelf / "demo-bmi" / "1.2.0"
    before = (path / "metadata.json").read_bytes()
    seal(path)
    assert (path / "metadata.json").read_bytes() == before
    assert json.loads(before)["files"][-1]["path"] == "tests.json"
