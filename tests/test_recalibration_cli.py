"""`kgrid recalibrate` end to end: a miscalibrated KFRE site becomes a valid, signed, published 1.1.0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import kgrid_py
from kgrid_py.cli import cli
from kgrid_py.errors import IntegrityError
from kgrid_py.learning.cohort import Site, kfre_cohort
from kgrid_py.learning.recalibration import cloglog

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recal")
    shutil.copytree(ROOT / "knowledge_objects" / "kfre" / "1.0.0", root / "shelf" / "kfre" / "1.0.0")
    table = kfre_cohort(
        7, (Site("a", 2500, risk_ratio=1.8), Site("b", 1500, risk_ratio=1.8)), shelf=str(root / "shelf")
    )
    pq.write_table(table, root / "val.parquet")
    return root


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_recalibrate_writes_a_valid_version_that_goes_through_the_curator_path(shelf: Path) -> None:
    books = shelf / "shelf"
    out = books / "kfre" / "1.1.0"
    text = invoke(
        "recalibrate",
        "kfre@1.0.0",
        "four-variable",
        "--shelf",
        str(books),
        "--validation",
        str(shelf / "val.parquet"),
        "--out",
        str(out),
        "--bootstrap",
        "20",
        "--horizon",
        "risk_2y=730",
        "--horizon",
        "risk_5y=1826",
    )
    assert "-> 1.1.0 (intercept" in text  # both sites share the baseline change, the slope is 1
    invoke("validate", str(out))
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "draft" and meta["dc:version"] == "1.1.0"
    (entry,) = meta["lineage"]
    parent = kgrid_py.load("kfre@1.0.0", shelf=books)
    assert entry["parent"] == "kfre@1.0.0" and entry["parent_digest"] == parent.content_digest
    record = entry["record"]
    assert [s["site"] for s in record["data"]] == ["a", "b"] and record["data"][0]["n"] == 2500
    assert set(record["optimism"]["oe[risk_5y]"]) == {"apparent", "optimism", "corrected"}
    assert abs(record["performance"]["after"]["oe[risk_5y]"] - 1) < abs(
        record["performance"]["before"]["oe[risk_5y]"] - 1
    )
    assert "## Updates" in (out / "README.md").read_text()

    # The new graph is the parent's risk with cloglog shifted by a_h, for every row.
    child = kgrid_py.load("kfre@1.1.0", shelf=books)
    rows = {"age": [40.0, 63, 80], "sex": ["female", "male", "male"], "egfr": [55.0, 45, 12], "uacr": [3.0, 30, 3000]}
    before, after = parent.call_batch("four-variable", rows), child.call_batch("four-variable", rows)
    for output in ("risk_2y", "risk_5y"):
        shift = record["parameters"][f"a[{output}]"]
        np.testing.assert_allclose(cloglog(after[output]), cloglog(before[output]) + shift, rtol=1e-12)

    # Curator path: pack, sign, publish with a required signature, deprecate the parent.
    keys, archive, target = shelf / "keys", shelf / "kfre-1.1.0.zip", shelf / "published"
    invoke("keygen", "--dir", str(keys), "--name", "curator")
    trust = shelf / "trust"
    trust.mkdir()
    shutil.copy(keys / "curator.pub.pem", trust)
    invoke("pack", str(out), "--output", str(archive))
    invoke("sign", str(archive), "--key", str(keys / "curator.key.pem"))
    shutil.copytree(books / "kfre" / "1.0.0", target / "kfre" / "1.0.0")
    invoke("publish", str(archive), "--to", str(target), "--require-signature", "--trust", str(trust))
    invoke("status", "kfre@1.0.0", "--set", "deprecated", "--successor", "kfre@1.1.0", "--shelf", str(target))
    assert kgrid_py.load("kfre@1", shelf=target).version == "1.1.0"


def test_changed_parent_is_refused_on_load(shelf: Path, tmp_path: Path) -> None:
    # Self-contained: its own shelf with the parent only, and its own derived 1.1.0.
    books = tmp_path / "shelf"
    shutil.copytree(shelf / "shelf" / "kfre" / "1.0.0", books / "kfre" / "1.0.0")
    invoke(
        "recalibrate", "kfre@1.0.0", "four-variable", "--shelf", str(books),
        "--validation", str(shelf / "val.parquet"), "--out", str(books / "kfre" / "1.1.0"),
        "--method", "intercept", "--bootstrap", "2",
        "--horizon", "risk_2y=730", "--horizon", "risk_5y=1826",
    )  # fmt: skip
    kgrid_py.load("kfre@1.1.0", shelf=books)  # loads while the parent is unchanged
    card = books / "kfre" / "1.0.0" / "README.md"
    card.write_text(card.read_text() + "\nchanged\n")
    # Re-seal the parent so it loads by itself: only its identity changed.
    invoke("build", str(books / "kfre" / "1.0.0"), "--seal-only")
    kgrid_py.load("kfre@1.0.0", shelf=books)
    with pytest.raises(IntegrityError, match="has changed since it was derived"):
        kgrid_py.load("kfre@1.1.0", shelf=books)


def test_bad_method_and_unknown_site_are_refused(shelf: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "recalibrate",
            "kfre@1.0.0",
            "four-variable",
            "--shelf",
            str(shelf / "shelf"),
            "--validation",
            str(shelf / "val.parquet"),
            "--out",
            str(tmp_path / "x"),
            "--site",
            "nowhere",
        ],
    )
    assert result.exit_code == 1 and "no rows for site(s) ['nowhere']" in result.output
    assert not (tmp_path / "x").exists()
