"""`kgrid federate plan|site|combine` through a folder mailbox: three sites, each with its own capture store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

import kgrid_py
from kgrid_py.cli import cli
from kgrid_py.learning import federation as fd
from kgrid_py.learning.cohort import Site, call_records, kfre_cohort, outcome_rows
from kgrid_py.learning.mailbox import Mailbox
from kgrid_py.learning.recalibration import Evidence
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.store_evidence import evidence_from_store
from kgrid_py.learning.subjects import SubjectKeyer

ROOT = Path(__file__).resolve().parents[1]
SECRET = "f" * 48
SITES = ("north", "south", "west")


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env={"KGRID_SUBJECT_SECRET": SECRET}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shelf with kfre 1.0.0, three site stores (calls + outcomes, miscalibrated), and keys."""
    root = tmp_path_factory.mktemp("federate")
    shutil.copytree(ROOT / "knowledge_objects" / "kfre" / "1.0.0", root / "shelf" / "kfre" / "1.0.0")
    sizes = {"north": 1500, "south": 900, "west": 400}
    cohort = kfre_cohort(21, tuple(Site(s, sizes[s], risk_ratio=1.8) for s in SITES), shelf=str(root / "shelf"))
    for site in SITES:
        rows = cohort.filter(pc.equal(cohort.column("site"), site))
        url = f"sqlite:///{root / f'{site}.db'}"
        with CaptureStore.open(url) as store:
            store.write_calls(call_records(rows, SubjectKeyer(SECRET)))
        pacsv.write_csv(pa.table(outcome_rows(rows)), root / f"{site}-outcomes.csv")
        invoke(
            "outcomes", "import", str(root / f"{site}-outcomes.csv"), "--store", url, "--site", site,
            "--outcome", "kidney_failure", "--subject-col", "patient_id", "--event-col", "kidney_failure",
            "--event-date-col", "kf_date", "--followup-col", "last_seen", "--competing-col", "died",
            "--competing-date-col", "death_date",
        )  # fmt: skip
        invoke("keygen", "--dir", str(root / "keys"), "--name", site)
    invoke("keygen", "--dir", str(root / "keys"), "--name", "coordinator")
    (root / "trust").mkdir()
    shutil.copy(root / "keys" / "coordinator.pub.pem", root / "trust")
    return root


def _plan(root: Path, box: Path, method: str) -> None:
    invoke(
        "federate", "plan", "kfre@1.0.0", "four-variable", "--method", method, "--shelf", str(root / "shelf"),
        "--key", str(root / "keys" / "coordinator.key.pem"), "--mailbox", str(box),
        *[a for s in SITES for a in ("--site", f"{s}={root / 'keys' / f'{s}.pub.pem'}")],
    )  # fmt: skip


def _answer(root: Path, box: Path, site: str) -> str:
    return invoke(
        "federate", "site", str(box), "--site", site, "--key", str(root / "keys" / f"{site}.key.pem"),
        "--trust", str(root / "trust"), "--store", f"sqlite:///{root / f'{site}.db'}", "--shelf", str(root / "shelf"),
    )  # fmt: skip


def _combine(root: Path, box: Path, shelf: Path) -> str:
    key = str(root / "keys" / "coordinator.key.pem")
    return invoke("federate", "combine", "--mailbox", str(box), "--key", key, "--shelf", str(shelf))


def _pooled_evidence(root: Path) -> Evidence:
    ko = kgrid_py.load("kfre@1.0.0", shelf=root / "shelf")
    parts = []
    horizons = {"risk_2y": 730.0, "risk_5y": 1826.0}
    for site in SITES:
        with CaptureStore.open(f"sqlite:///{root / f'{site}.db'}") as store:
            parts.append(evidence_from_store(store, ko, "four-variable", site, "time-to-event", horizons))
    return Evidence(
        "time-to-event",
        horizons,
        {o: np.concatenate([p.predicted[o] for p in parts]) for o in horizons},
        np.concatenate([p.time for p in parts]),
        np.concatenate([p.cause for p in parts]),
        np.concatenate([p.site for p in parts]),
    )


def test_three_sites_converge_through_a_folder_mailbox_with_a_site_offline(network: Path, tmp_path: Path) -> None:
    root, box = network, tmp_path / "box"
    shelf = tmp_path / "shelf"
    shutil.copytree(root / "shelf", shelf)
    _plan(root, box, "slope")
    rounds_offline, replies = 0, []
    for _ in range(12):
        plan = Mailbox(box).latest_plan()["payload"]
        for site in SITES:
            if site == "west" and plan["round"] == 2 and rounds_offline < 2:
                continue  # west is offline for a while; the study waits for it
            replies.append(_answer(root, box, site))
        text = _combine(root, box, shelf)
        if "waiting for 1 site(s): west" in text:
            rounds_offline += 1
            continue
        if "converged" in text:
            break
    assert rounds_offline == 2 and "converged in" in text
    assert sum("round 2 is already answered" in r for r in replies) == 4  # north and south polled twice more
    child = shelf / "kfre" / "1.1.0"
    invoke("validate", str(child))
    meta = json.loads((child / "metadata.json").read_text())
    (entry,) = meta["lineage"]
    federation = entry["record"]["federation"]
    assert entry["parent_digest"] == kgrid_py.load("kfre@1.0.0", shelf=shelf).content_digest
    assert len(federation["rounds"]) == len(federation["plans_sha256"]) <= 8
    assert {s["site"] for s in federation["rounds"][0]["sites"]} == set(SITES)
    assert all(len(s["message_sha256"]) == 64 for r in federation["rounds"] for s in r["sites"])

    # The published estimate is the pooled single-process fit on the same rows, and replays bit for bit.
    pooled = fd.pooled_fit(_pooled_evidence(root), "slope", federation["grid_days"])
    published = entry["record"]["parameters"]
    np.testing.assert_allclose([published[n] for n in pooled.names], pooled.estimates, rtol=0, atol=1e-10)
    result = json.loads((box / "result.json").read_text())
    mailbox = Mailbox(box)
    coordinator = serialization.load_pem_public_key((root / "keys" / "coordinator.pub.pem").read_bytes())
    trusted = mailbox.trusted(coordinator)  # type: ignore[arg-type]
    plans = [fd.verify_plan(d, trusted) for d in mailbox.plan_documents()]
    again = fd.replay(plans, [mailbox.messages(p["round"]) for p in plans], trusted)
    assert [float(v).hex() for v in again.update.estimates] == list(result["parameters_hex"].values())


def test_a_parent_changed_since_the_plan_gets_no_version(network: Path, tmp_path: Path) -> None:
    root, box = network, tmp_path / "box"
    shelf = tmp_path / "shelf"
    shutil.copytree(root / "shelf", shelf)
    _plan(root, box, "intercept")
    for site in SITES:
        _answer(root, box, site)
    card = shelf / "kfre" / "1.0.0" / "README.md"
    card.write_text(card.read_text() + "\nedited after the plan\n")
    invoke("build", str(shelf / "kfre" / "1.0.0"), "--seal-only")
    result = CliRunner().invoke(
        cli,
        ["federate", "combine", "--mailbox", str(box), "--key", str(root / "keys" / "coordinator.key.pem"),
         "--shelf", str(shelf)],
    )  # fmt: skip
    assert result.exit_code == 1 and "the parent has changed since the plan" in result.output
    assert not (shelf / "kfre" / "1.1.0").exists() and not (box / "result.json").exists()


def test_a_site_refuses_a_plan_not_signed_by_its_coordinator(network: Path, tmp_path: Path) -> None:
    root, box = network, tmp_path / "box"
    _plan(root, box, "intercept")
    other = tmp_path / "other-trust"
    other.mkdir()
    shutil.copy(root / "keys" / "north.pub.pem", other)
    result = CliRunner().invoke(
        cli,
        ["federate", "site", str(box), "--site", "north", "--key", str(root / "keys" / "north.key.pem"),
         "--trust", str(other), "--store", f"sqlite:///{root / 'north.db'}", "--shelf", str(root / "shelf")],
    )  # fmt: skip
    assert result.exit_code == 1 and "not in the trust dir" in result.output
    assert not (box / "messages").exists()
