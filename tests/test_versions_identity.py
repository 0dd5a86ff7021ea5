"""One identity digest per KO version: what is signed, printed, put in provenance, for life."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from demo_ko import write_demo_ko

import kgrid_py
from kgrid_py.cli import cli
from kgrid_py.curation.archive import inspect, pack
from kgrid_py.curation.lifecycle import set_status
from kgrid_py.curation.publish import PublishPolicy, publish_archive
from kgrid_py.curation.signing import generate_keypair, load_private_key, sign_archive
from kgrid_py.digest import folder_identity
from kgrid_py.shelf import Shelf

GOOD = {"weight": 70, "height": 1.75, "sex": "female", "age": 40}


@pytest.fixture
def signed_shelf(tmp_path: Path) -> tuple[Path, str]:
    """A shelf holding demo-bmi 1.0.0 and 1.1.0, published from signed archives; and 1.0.0's signed digest."""
    key, public = generate_keypair(tmp_path / "keys", "curator")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "curator.pub.pem").write_bytes(public.read_bytes())
    shelf = tmp_path / "shelf"
    policy = PublishPolicy(require_signature=True, trust_dir=trust)
    signed_digest = ""
    for version in ("1.0.0", "1.1.0"):
        data = sign_archive(pack(write_demo_ko(tmp_path / f"src-{version}", version, "draft")), load_private_key(key))
        info = inspect(data)
        assert info.signature is not None
        if version == "1.0.0":
            signed_digest = info.signature["manifest_sha256"]
        publish_archive(data, shelf, policy, actor="alice")
    return shelf, signed_digest


def _digest_of(shelf: Path, ref: str) -> tuple[str, str]:
    """The loaded KO's content_digest and a result's provenance digest."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ko = kgrid_py.load(ref, shelf=shelf, allow_retired=True)
    return ko.content_digest, ko.call("bmi", GOOD).provenance.content_digest


def test_the_digest_equals_the_signed_manifest(signed_shelf: tuple[Path, str]) -> None:
    shelf, signed = signed_shelf
    # published as a draft, activated on the shelf: the status changed, the identity did not
    assert _digest_of(shelf, "demo-bmi@1.0.0") == (signed, signed)
    assert folder_identity(shelf / "demo-bmi" / "1.0.0") == signed


def test_deprecating_and_retiring_keep_the_digest(signed_shelf: tuple[Path, str]) -> None:
    shelf, signed = signed_shelf
    set_status(shelf, "demo-bmi@1.0.0", "deprecated", "ops", successor="demo-bmi@1.1.0", sunset="2027-06-30")
    assert json.loads((shelf / "demo-bmi" / "1.0.0" / "metadata.json").read_text())["status"] == "deprecated"
    assert _digest_of(shelf, "demo-bmi@1.0.0") == (signed, signed)
    set_status(shelf, "demo-bmi@1.0.0", "retired", "ops", successor="demo-bmi@1.1.0")
    assert _digest_of(shelf, "demo-bmi@1.0.0") == (signed, signed)


def test_validate_info_and_pack_print_the_same_digest(signed_shelf: tuple[Path, str], tmp_path: Path) -> None:
    shelf, signed = signed_shelf
    runner = CliRunner()
    folder = shelf / "demo-bmi" / "1.0.0"
    validated = runner.invoke(cli, ["validate", str(folder)])
    assert validated.exit_code == 0 and signed in validated.output
    described = runner.invoke(cli, ["info", "demo-bmi@1.0.0", "--shelf", str(shelf)])
    assert described.exit_code == 0 and f"digest: {signed}" in described.output
    packed = runner.invoke(cli, ["pack", str(folder), "--output", str(tmp_path / "again.zip")])
    assert packed.exit_code == 0 and signed in packed.output


def test_a_changed_file_changes_the_digest(tmp_path: Path) -> None:
    path = write_demo_ko(tmp_path / "src")
    before = kgrid_py.load(path).content_digest
    (path / "README.md").write_text("# Demo BMI\n\nEdited.\n")
    from kgrid_py.curation.build import seal

    seal(path)
    assert kgrid_py.load(path).content_digest != before


def test_shelf_version_listing_is_unaffected(signed_shelf: tuple[Path, str]) -> None:
    shelf, _ = signed_shelf
    assert [e.version for e in Shelf(shelf).versions("demo-bmi")] == ["1.0.0", "1.1.0"]
