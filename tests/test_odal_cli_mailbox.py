"""`kgrid federate plan --lead` + `kgrid federate odal`: the one-shot ODAL2 surrogate through the file mailbox."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from click.testing import CliRunner, Result

import kgrid_py
from kgrid_py.cli import cli
from kgrid_py.learning.evidence import evidence_from_table, read_table
from kgrid_py.learning.mailbox import Mailbox
from kgrid_py.learning.recalibration import fit_logistic, logit

ROOT = Path(__file__).resolve().parents[1]
SITES = {"lead": 1500, "east": 1200, "small": 700}
HORIZON = 2192.0


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def invoke(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.output


def plco_site(
    rng: np.random.Generator, ko: kgrid_py.KnowledgeObject, site: str, n: int, a: float, b: float
) -> pa.Table:
    """PLCOm2012 inputs, the KO's risk, and a 6-year outcome drawn from logit p' = a + b·logit p."""
    former = rng.random(n) < 0.5
    cols = {
        "age": rng.uniform(55, 75, n).round(1),
        "race": rng.choice(["white", "black", "hispanic", "asian"], n).tolist(),
        "education": rng.integers(1, 7, n),
        "bmi": rng.normal(27, 4, n).clip(16, 50).round(1),
        "copd": (rng.random(n) < 0.25).tolist(),
        "personal_cancer_history": (rng.random(n) < 0.1).tolist(),
        "family_lung_cancer_history": (rng.random(n) < 0.2).tolist(),
        "smoking_status": np.where(former, "former", "current").tolist(),
        "cigarettes_per_day": rng.uniform(10, 40, n).round(0),
        "smoking_years": rng.uniform(25, 50, n).round(0),
        "years_since_quit": np.where(former, rng.uniform(1, 15, n).round(0), 0.0),
    }
    risk = np.asarray(ko.call_batch("risk", cols)["risk_6y"], dtype=np.float64)
    truth = 1.0 / (1.0 + np.exp(-(a + b * logit(risk))))
    event = rng.random(n) < truth
    time = np.where(event, rng.integers(30, int(HORIZON), n), HORIZON + rng.integers(0, 400, n))
    return pa.table({**cols, "site": [site] * n, "time_days": time.astype(np.float64), "cause": event.astype(int)})


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plcom2012 1.0.0 on a shelf, three sites' validation files, a key pair per site and the coordinator."""
    root = tmp_path_factory.mktemp("odal")
    shutil.copytree(ROOT / "knowledge_objects" / "plcom2012" / "1.0.0", root / "shelf" / "plcom2012" / "1.0.0")
    ko = kgrid_py.load("plcom2012@1.0.0", shelf=root / "shelf")
    rng = np.random.default_rng(15)
    for site, n in SITES.items():
        pacsv.write_csv(plco_site(rng, ko, site, n, a=0.9, b=0.8), root / f"{site}.csv")
        invoke("keygen", "--dir", str(root / "keys"), "--name", site)
    shutil.copytree(ROOT / "knowledge_objects" / "kfre" / "1.0.0", root / "shelf" / "kfre" / "1.0.0")
    invoke("keygen", "--dir", str(root / "keys"), "--name", "lead-coordinator")
    (root / "trust").mkdir()
    shutil.copy(root / "keys" / "lead-coordinator.pub.pem", root / "trust")
    return root


def plan(root: Path, box: Path, *extra: str, ref: str = "plcom2012@1.0.0", function: str = "risk") -> Result:
    return run(
        "federate", "plan", ref, function, "--method", "slope", "--shelf", str(root / "shelf"),
        "--key", str(root / "keys" / "lead-coordinator.key.pem"), "--mailbox", str(box),
        *[a for s in SITES for a in ("--site", f"{s}={root / 'keys' / f'{s}.pub.pem'}")], *extra,
    )  # fmt: skip


def answer(root: Path, box: Path, site: str) -> str:
    return invoke(
        "federate", "site", str(box), "--site", site, "--key", str(root / "keys" / f"{site}.key.pem"),
        "--trust", str(root / "trust"), "--validation", str(root / f"{site}.csv"), "--shelf", str(root / "shelf"),
    )  # fmt: skip


def odal(root: Path, box: Path, shelf: Path, *source: str) -> Result:
    return run(
        "federate", "odal", "--mailbox", str(box), "--key", str(root / "keys" / "lead-coordinator.key.pem"),
        "--site", "lead", *(source or ("--validation", str(root / "lead.csv"))), "--shelf", str(shelf),
    )  # fmt: skip


def test_one_shot_odal2_version_is_within_the_documented_distance_of_pooled(network: Path, tmp_path: Path) -> None:
    root, box, shelf = network, tmp_path / "plco-odal", tmp_path / "shelf"
    shutil.copytree(root / "shelf", shelf)
    result = plan(root, box, "--lead", "lead", "--validation", str(root / "lead.csv"))
    assert result.exit_code == 0, result.output
    ko = kgrid_py.load("plcom2012@1.0.0", shelf=shelf)
    lead = evidence_from_table(ko, "risk", read_table(root / "lead.csv"), "logistic", {"risk_6y": HORIZON})[0]
    theta_bar = fit_logistic(*lead.binary(), "slope").estimates.tolist()  # type: ignore[arg-type]
    assert Mailbox(box).latest_plan()["payload"]["theta"]["values"] == theta_bar

    answer(root, box, "lead")
    assert "waiting for 2 site(s): east, small" in odal(root, box, shelf).output
    for site in ("east", "small"):
        answer(root, box, site)
    text = odal(root, box, shelf)
    assert text.exit_code == 0, text.output
    assert "ODAL2 one-shot surrogate at lead across 3 sites" in text.output
    child = shelf / "plcom2012" / "1.1.0"
    invoke("validate", str(child))
    (entry,) = json.loads((child / "metadata.json").read_text())["lineage"]
    record = entry["record"]
    assert "ODAL2" in entry["reason"] and "not, the pooled fit" in entry["reason"]
    assert record["federation"]["one_shot"] == {"lead": "lead", "theta_bar": theta_bar, "pooled": False}
    assert "NOT the pooled" in record["federation"]["algorithm"]
    assert [s["site"] for s in record["data"]] == sorted(SITES) and len(record["federation"]["rounds"]) == 1
    surrogate = np.array([record["parameters"]["a"], record["parameters"]["b"]])

    # The same round-1 messages are the first round of the exact study: carry it on to the pooled fit.
    key = str(root / "keys" / "lead-coordinator.key.pem")
    pooled_shelf = tmp_path / "pooled-shelf"
    shutil.copytree(root / "shelf", pooled_shelf)
    for _ in range(10):
        out = invoke("federate", "combine", "--mailbox", str(box), "--key", key, "--shelf", str(pooled_shelf))
        if "converged" in out:
            break
        for site in SITES:
            answer(root, box, site)
    (pooled_entry,) = json.loads((pooled_shelf / "plcom2012" / "1.1.0" / "metadata.json").read_text())["lineage"]
    pooled = np.array([pooled_entry["record"]["parameters"][n] for n in ("a", "b")])
    se = np.array([pooled_entry["record"]["standard_errors"][n] for n in ("a", "b")])
    rows = [evidence_from_table(ko, "risk", read_table(root / f"{s}.csv"), "logistic", {"risk_6y": HORIZON})[0]
            for s in sorted(SITES)]  # fmt: skip
    offset, y = (np.concatenate(part) for part in zip(*(r.binary() for r in rows), strict=True))
    np.testing.assert_allclose(pooled, fit_logistic(offset, y, "slope").estimates, rtol=0, atol=1e-10)
    # The README's distance: within 2 % and a quarter of a standard error of pooled, yet not equal.
    assert np.all(np.abs(surrogate - pooled) / np.abs(pooled) < 0.02), (surrogate, pooled)
    assert np.all(np.abs(surrogate - pooled) < se / 4), (surrogate, pooled, se)
    assert np.any(surrogate != pooled)
    assert not np.allclose(surrogate, theta_bar, rtol=1e-3)  # the network moved the lead's own estimate


def test_one_shot_refusals(network: Path, tmp_path: Path) -> None:
    root, shelf = network, tmp_path / "shelf"
    shutil.copytree(root / "shelf", shelf)
    kfre = plan(root, tmp_path / "k", "--lead", "lead", "--validation", str(root / "lead.csv"),
                ref="kfre@1.0.0", function="four-variable")  # fmt: skip
    assert kfre.exit_code == 1 and "ODAL2 surrogate is implemented for logistic KOs only" in kfre.output
    assert not (tmp_path / "k" / "plans").exists()
    stranger = plan(root, tmp_path / "s", "--lead", "nobody", "--validation", str(root / "lead.csv"))
    assert stranger.exit_code == 2 and "is not one of the --site names" in stranger.output
    typo = plan(root, tmp_path / "t", "--lead", "lead", "--store", str(tmp_path / "typo.db"))
    assert typo.exit_code == 1 and "no such SQLite file" in typo.output and not (tmp_path / "typo.db").exists()
    orphan = plan(root, tmp_path / "o", "--validation", str(root / "lead.csv"))
    assert orphan.exit_code == 2 and "give --lead SITE" in orphan.output

    # A study planned without --lead starts at the original model: its round 1 is not ODAL2's.
    box = tmp_path / "plain"
    assert plan(root, box).exit_code == 0
    for site in SITES:
        answer(root, box, site)
    result = odal(root, box, shelf)
    assert result.exit_code == 1 and "not at lead's own estimate" in result.output
    # The lead's rows must be those of its own message.
    box = tmp_path / "swapped"
    assert plan(root, box, "--lead", "lead", "--validation", str(root / "lead.csv")).exit_code == 0
    for site in SITES:
        answer(root, box, site)
    result = odal(root, box, shelf, "--validation", str(root / "east.csv"))
    assert result.exit_code == 1 and "do not give its round-1 message's sums" in result.output
    assert not (shelf / "plcom2012" / "1.1.0").exists()
