"""`kgrid recalibrate --store`: a site's captured calls, linked to outcomes imported as users do, as evidence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from pg import capture_url, pg_url  # noqa: F401 - fixtures

import kgrid_py
from kgrid_py.cli import cli
from kgrid_py.learning.cohort import Site, call_records, kfre_cohort, outcome_rows
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.store_evidence import evidence_from_sites
from kgrid_py.learning.subjects import SubjectKeyer
from kgrid_py.learning.versioning import data_digest

ROOT = Path(__file__).resolve().parents[1]
SECRET = "e" * 48
HORIZONS = {"risk_2y": 730.0, "risk_5y": 1826.0}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"KGRID_SUBJECT_SECRET": SECRET}, catch_exceptions=False)


def invoke(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.output


def fill_store(url: str, cohort: pa.Table, folder: Path, with_outcomes: tuple[str, ...]) -> None:
    """Captured calls for every site of ``cohort``; outcomes imported through the CLI for ``with_outcomes``."""
    with CaptureStore.open(url) as store:
        store.write_calls(call_records(cohort, SubjectKeyer(SECRET), refused_every=7))
    for site in with_outcomes:
        rows = cohort.filter(pc.equal(cohort.column("site"), site))
        pacsv.write_csv(pa.table(outcome_rows(rows)), folder / f"{site}-outcomes.csv")
        invoke(
            "outcomes", "import", str(folder / f"{site}-outcomes.csv"), "--store", url, "--site", site,
            "--outcome", "kidney_failure", "--subject-col", "patient_id", "--event-col", "kidney_failure",
            "--event-date-col", "kf_date", "--followup-col", "last_seen", "--competing-col", "died",
            "--competing-date-col", "death_date",
        )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kfre 1.0.0; a store with sites a and b (outcomes linked) and c (calls only); the linked rows as a file."""
    root = tmp_path_factory.mktemp("recal-store")
    shutil.copytree(ROOT / "knowledge_objects" / "kfre" / "1.0.0", root / "shelf" / "kfre" / "1.0.0")
    sites = (Site("a", 1500, risk_ratio=1.8), Site("b", 900, risk_ratio=1.8), Site("c", 200))
    cohort = kfre_cohort(31, sites, shelf=str(root / "shelf"))
    fill_store(f"sqlite:///{root / 'capture.db'}", cohort, root, ("a", "b"))
    linked = cohort.filter(pc.is_in(cohort.column("site"), pa.array(["a", "b"])))
    pq.write_table(linked, root / "same-rows.parquet")
    return root


def recalibrate(root: Path, out: Path, *source: str, method: str = "auto") -> Result:
    return run(
        "recalibrate", "kfre@1.0.0", "four-variable", "--shelf", str(root / "shelf"), *source, "--out", str(out),
        "--method", method, "--bootstrap", "20",
    )  # fmt: skip


def lineage(folder: Path) -> dict:
    (entry,) = json.loads((folder / "metadata.json").read_text())["lineage"]
    return entry


def test_store_gives_the_file_estimates_and_a_valid_version(site: Path, tmp_path: Path) -> None:
    from_store, from_file = tmp_path / "store", tmp_path / "file"
    text = recalibrate(site, from_store, "--store", str(site / "capture.db"))
    assert text.exit_code == 0, text.output
    assert "-> 1.1.0 (intercept" in text.output
    result = recalibrate(site, from_file, "--validation", str(site / "same-rows.parquet"))
    assert result.exit_code == 0, result.output
    invoke("validate", str(from_store))
    store_entry, file_entry = lineage(from_store), lineage(from_file)
    assert store_entry["method"] == file_entry["method"] == "intercept"
    store_record, file_record = store_entry["record"], file_entry["record"]
    names = list(file_record["parameters"])
    np.testing.assert_allclose(
        [store_record["parameters"][n] for n in names], [file_record["parameters"][n] for n in names], rtol=1e-12
    )
    # c has calls but no outcome: discovered, skipped; the per-site summary equals the file's (dates included).
    assert store_record["source"] == {"capture_store": "sqlite", "sites": ["a", "b"]}
    assert store_record["data"] == file_record["data"]
    assert [s["site"] for s in store_record["data"]] == ["a", "b"] and store_record["data"][0]["n"] == 1500
    assert store_record["data"][0]["call_dates"][0].startswith("2020-")
    # The digest is over exactly the rows used: recomputed from the store it matches the lineage.
    parent = kgrid_py.load("kfre@1.0.0", shelf=site / "shelf")
    with CaptureStore.open(f"sqlite:///{site / 'capture.db'}") as store:
        evidence = evidence_from_sites(store, parent, "four-variable", [], "time-to-event", HORIZONS)
    assert store_record["data_digest"] == data_digest(evidence)
    assert evidence.n == 2400

    # The README's one-site walkthrough ends here: pack, sign, publish, deprecate the parent.
    keys, archive, target = tmp_path / "keys", tmp_path / "kfre-1.1.0.zip", tmp_path / "published"
    invoke("keygen", "--dir", str(keys), "--name", "curator")
    (tmp_path / "trust").mkdir()
    shutil.copy(keys / "curator.pub.pem", tmp_path / "trust")
    invoke("pack", str(from_store), "--output", str(archive))
    invoke("sign", str(archive), "--key", str(keys / "curator.key.pem"))
    shutil.copytree(site / "shelf" / "kfre" / "1.0.0", target / "kfre" / "1.0.0")
    invoke("publish", str(archive), "--to", str(target), "--require-signature", "--trust", str(tmp_path / "trust"))
    invoke("status", "kfre@1.0.0", "--set", "deprecated", "--successor", "kfre@1.1.0", "--shelf", str(target))
    assert kgrid_py.load("kfre@1", shelf=target).version == "1.1.0"


def test_named_sites_are_combined_with_their_site_column(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "only-b"
    result = recalibrate(site, out, "--store", f"sqlite:///{site / 'capture.db'}", "--site", "b", method="intercept")
    assert result.exit_code == 0, result.output
    record = lineage(out)["record"]
    assert [s["site"] for s in record["data"]] == ["b"] and record["data"][0]["n"] == 900
    both = tmp_path / "both"
    result = recalibrate(site, both, "--store", str(site / "capture.db"), "--site", "b", "--site", "a", "--site", "a")
    assert result.exit_code == 0, result.output
    assert [(s["site"], s["n"]) for s in lineage(both)["record"]["data"]] == [("a", 1500), ("b", 900)]


def test_bad_input_is_a_clear_error_and_writes_nothing(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    db = str(site / "capture.db")
    result = recalibrate(site, out)
    assert result.exit_code == 2 and "exactly one of --validation FILE and --store URL" in result.output
    result = recalibrate(site, out, "--store", db, "--validation", str(site / "same-rows.parquet"))
    assert result.exit_code == 2 and "exactly one of" in result.output
    result = recalibrate(site, out, "--store", "mysql://x/y")
    assert result.exit_code == 1 and "use a path, sqlite:///path or postgresql://" in result.output
    missing = tmp_path / "typo.db"
    result = recalibrate(site, out, "--store", str(missing))
    assert result.exit_code == 1 and "no such SQLite file" in result.output
    assert not missing.exists()  # reading never creates a store
    empty = tmp_path / "empty.db"
    CaptureStore.open(str(empty)).close()
    result = recalibrate(site, out, "--store", str(empty))
    assert result.exit_code == 1 and "is linked to an outcome (no site with calls)" in result.output
    result = recalibrate(site, out, "--store", db, "--site", "c")
    assert result.exit_code == 1 and "site 'c': no call of kfre@1.0.0 four-variable is linked" in result.output
    result = recalibrate(site, out, "--store", db, "--site", "nowhere")
    assert result.exit_code == 1 and "holds no call of kfre@1.0.0 four-variable at site 'nowhere'" in result.output
    result = recalibrate(site, out, "--store", "postgresql://nobody:secret@127.0.0.1:1/none")
    assert result.exit_code == 1 and "cannot open capture store" in result.output and "secret" not in result.output
    assert not out.exists()


def test_store_on_each_database_matches_the_file(capture_url: str, tmp_path: Path) -> None:  # noqa: F811
    shutil.copytree(ROOT / "knowledge_objects" / "kfre" / "1.0.0", tmp_path / "shelf" / "kfre" / "1.0.0")
    cohort = kfre_cohort(5, (Site("x", 700, risk_ratio=1.6),), shelf=str(tmp_path / "shelf"))
    fill_store(capture_url, cohort, tmp_path, ("x",))
    pq.write_table(cohort, tmp_path / "rows.parquet")
    for name, source in (("s", ("--store", capture_url)), ("f", ("--validation", str(tmp_path / "rows.parquet")))):
        result = recalibrate(tmp_path, tmp_path / name, *source, method="slope")
        assert result.exit_code == 0, result.output
    a, b = lineage(tmp_path / "s")["record"], lineage(tmp_path / "f")["record"]
    names = list(b["parameters"])
    assert names == ["a[risk_2y]", "a[risk_5y]", "b"]
    np.testing.assert_allclose([a["parameters"][n] for n in names], [b["parameters"][n] for n in names], rtol=1e-12)
    assert a["data"] == b["data"] and a["source"]["capture_store"] == capture_url.split(":")[0]
