"""The learning loop end to end, in real processes on loopback (issue 15, "Tests").

Three sites, ``north`` and ``south`` on SQLite and ``west`` on PostgreSQL (a real server from
``tests/pg.py``), each run their own ``kgrid serve --capture`` with their own shelf, secret and
signature policy; a fourth activator is the coordinator and serves the federation mailbox. The
EHR at each site calls KFRE once per patient over HTTP; what really happens to the patients
follows a miscalibrated KFRE (true baseline hazard θ times the North-American one, see
``loop_e2e_support``), and outcomes are posted to each site's ``/outcomes``. Then:

1. ``kgrid monitor`` (a subprocess) on a site's store exits 3 with O:E alerts for kfre 1.0.0;
2. the coordinator plans an ``intercept`` study; the sites answer by polling the coordinator
   (``kgrid federate site URL``, subprocesses, outbound calls only) until ``combine`` converges
   and writes kfre 1.1.0, whose baseline shifts must lie within 3 SE of the truth (ln θ);
3. the curator validates, packs and signs it, publishes it to every site's activator over HTTP
   (each requires a trusted signature) and deprecates 1.0.0 there; every site then answers for
   1.1.0, and its answer is the parent's with the published shift applied;
4. fresh patients from the same truth are called through the same unpinned endpoint, which 1.1.0
   now answers; with their outcomes posted, ``kgrid monitor kfre@1.1.0`` exits 0 at every site with
   O:E and slope computed (not "insufficient data") inside the declared ranges, and
   ``kgrid monitor kfre@1.0.0`` still exits 3.

Competing deaths are 2 % a year here. The recalibration targets KFRE's net risk (deaths
censored, as the README says) while the monitor's observed risk is Aalen-Johansen's cumulative
incidence, so the more deaths compete, the lower a well-recalibrated version's O:E: in this
population its lowest per-site O:E is about 0.89 at 5 % a year and 0.94 at 2 % (3 sites x 3,000
patients, measured in process), and with 800 patients a site the fresh phase would then alert by
chance at some seeds.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from activator_server import Server
from click.testing import CliRunner
from loop_e2e_support import (
    RISK_RATIO,
    CliRun,
    SiteProcess,
    call_each,
    clinic_patients,
    kgrid,
    post_outcomes,
    stop_commands,
    true_outcomes,
)
from pg import postgres_server

import kgrid_py
from kgrid_py.cli import cli
from kgrid_py.curation.tokens import hash_token
from kgrid_py.learning.cohort import baseline_hazard_factor
from kgrid_py.learning.recalibration import cloglog

REPO = Path(__file__).resolve().parents[1]
PUBLISH_TOKEN = "loop-e2e-publish-token"
ADMIN_TOKEN = "loop-e2e-admin-token"  # the admin role (/outcomes, status); --admin-token opens only /admin/reload
STUDY = "kfre-e2e"
FIRST_PATIENTS = 400  # per site, on 1.0.0 (federation needs >= 50 patients and 10 events a site)
FRESH_PATIENTS = 800  # per site, on 1.1.0: enough events that O:E and slope are estimated per site
ENDPOINT = "/endpoints/kfre/four-variable"  # unpinned: the highest active version answers
MAX_ROUNDS = 8
READY_TIMEOUT_S = 240  # four activators start at once; a loaded 2-core machine needs far more than one's 60 s


def _cli(*args: str, env: dict[str, str] | None = None) -> str:
    """The coordinator's and curator's commands, in process (the sites' and monitor's are subprocesses)."""
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, f"kgrid {' '.join(args)}: {result.output}"
    return result.output


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[list[SiteProcess], Server, Path]]:
    """Three site activators (SQLite, SQLite, PostgreSQL) and the coordinator's; all stopped at the end."""
    tokens = tmp_path / "tokens.json"
    entries = [
        {"name": "curator", "roles": ["publish"], "sha256": hash_token(PUBLISH_TOKEN)},
        {"name": "site-admin", "roles": ["admin"], "sha256": hash_token(ADMIN_TOKEN)},
    ]
    tokens.write_text(json.dumps({"tokens": entries}))
    _cli("keygen", "--dir", str(tmp_path / "curator"), "--name", "curator")
    trusted = tmp_path / "trusted-keys"  # every site trusts the curator's signature
    trusted.mkdir()
    shutil.copy(tmp_path / "curator" / "curator.pub.pem", trusted)
    with ExitStack() as stack:
        stack.callback(stop_commands)  # last out: any kgrid command a failed step left running
        pg = stack.enter_context(postgres_server())
        sites = []
        for name in ("north", "south", "west"):
            root = tmp_path / name
            shelf = root / "shelf"
            shutil.copytree(REPO / "knowledge_objects" / "kfre" / "1.0.0", shelf / "kfre" / "1.0.0")
            secret = root / "subject.secret"
            secret.write_text(secrets.token_hex(32))
            store = pg if name == "west" else f"sqlite:///{root / 'capture.sqlite3'}"
            sites.append(SiteProcess(name, root, shelf, store, secret))
        coordinator_shelf = tmp_path / "coordinator" / "shelf"
        shutil.copytree(REPO / "knowledge_objects" / "kfre" / "1.0.0", coordinator_shelf / "kfre" / "1.0.0")
        studies = tmp_path / "coordinator" / "studies"
        studies.mkdir()
        common = ("--no-watch", "--no-access-log")
        for site in sites:  # started together, so their start-ups overlap
            site.server = Server(
                site.shelf, *common, "--tokens", str(tokens), "--require-signature", "--trust", str(trusted),
                "--capture", site.store, "--site", site.name, "--subject-secret-file", str(site.secret),
                log=site.root / "server.log",
            )  # fmt: skip
            stack.callback(site.server.stop)
        coordinator = Server(coordinator_shelf, *common, "--federation", str(studies), log=tmp_path / "coord.log")
        stack.callback(coordinator.stop)
        started = time.monotonic()
        for server in [*(s.server for s in sites), coordinator]:
            assert server is not None
            server.wait_ready(timeout=READY_TIMEOUT_S)
        print(f"4 activators ready in {time.monotonic() - started:.1f} s")
        yield sites, coordinator, coordinator_shelf


def _in_parallel(work: Callable[[SiteProcess], Any], sites: list[SiteProcess]) -> list[Any]:
    with ThreadPoolExecutor(len(sites)) as pool:
        return list(pool.map(work, sites))


def _see_patients(
    sites: list[SiteProcess], parent: kgrid_py.KnowledgeObject, n: int, seed: int, tag: str
) -> list[list[dict[str, Any]]]:
    """Each site's EHR calls KFRE for ``n`` new patients; their true outcomes are then posted."""

    def one(site: SiteProcess) -> list[dict[str, Any]]:
        rng = np.random.default_rng([seed, sites.index(site)])
        patients = clinic_patients(rng, n)
        ids = [f"{site.name}-{tag}-{i:05d}" for i in range(n)]
        answers = call_each(site.url, ENDPOINT, patients, ids)
        start = dt.datetime.now(dt.UTC).date()  # after the calls: no outcome predates its call
        post_outcomes(site.url, ADMIN_TOKEN, true_outcomes(rng, parent, patients, ids, site.name, start))
        return answers

    return _in_parallel(one, sites)


def _monitor(site: SiteProcess, ref: str, out: Path) -> CliRun:
    return kgrid("monitor", ref, "four-variable", "--store", site.store, "--shelf", str(site.shelf), "--json", str(out))


def _poll(site: SiteProcess, url: str, keys: Path, trust: Path, token: str) -> CliRun:
    """``kgrid federate site``: the site fetches the latest plan and posts its message (outbound only)."""
    return kgrid(
        "federate", "site", url, "--site", site.name, "--key", str(keys / f"{site.name}.key.pem"),
        "--trust", str(trust), "--store", site.store, "--shelf", str(site.shelf),
        env={"KGRID_FEDERATION_TOKEN": token},
    )  # fmt: skip


def _performance(report: dict[str, Any]) -> list[dict[str, Any]]:
    (section,) = report["sites"]
    return list(section["performance"])


def test_a_miscalibrated_kfre_becomes_1_1_0_at_every_site_and_its_alert_goes(
    network: tuple[list[SiteProcess], Server, Path], tmp_path: Path
) -> None:
    sites, coordinator, coordinator_shelf = network
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[step] = round(now - clock, 1)
        clock = now

    parent = kgrid_py.load("kfre@1.0.0", shelf=REPO / "knowledge_objects")

    # 1. Patients seen on 1.0.0; their outcomes follow the miscalibrated truth.
    first = _see_patients(sites, parent, FIRST_PATIENTS, seed=15, tag="a")
    assert {a["info"]["version"] for answers in first for a in answers} == {"1.0.0"}
    lap("calls and outcomes on 1.0.0")
    west = sites[2]
    monitoring = _monitor(west, "kfre@1.0.0", tmp_path / "before.json")  # runs while the study starts

    # 2. A federated intercept study; the sites poll the coordinator, outbound only.
    keys = tmp_path / "keys"
    for name in ("coordinator", *(s.name for s in sites)):
        _cli("keygen", "--dir", str(keys), "--name", name)
    site_trust = tmp_path / "site-trust"
    site_trust.mkdir()
    shutil.copy(keys / "coordinator.pub.pem", site_trust)
    box = tmp_path / "coordinator" / "studies" / STUDY
    _cli(
        "federate", "plan", "kfre@1.0.0", "four-variable", "--method", "intercept", "--shelf", str(coordinator_shelf),
        "--key", str(keys / "coordinator.key.pem"), "--mailbox", str(box),
        *[a for s in sites for a in ("--site", f"{s.name}={keys / f'{s.name}.pub.pem'}")],
    )  # fmt: skip
    tokens = {s.name: _cli("federate", "token", "--mailbox", str(box), "--site", s.name).strip() for s in sites}
    url = f"{coordinator.url}/federation/{STUDY}"
    child = tmp_path / "kfre-1.1.0"
    for round_ in range(MAX_ROUNDS):
        runs = [_poll(s, url, keys, site_trust, tokens[s.name]) for s in sites]
        if round_ == 0:
            before = monitoring.wait()
            assert before.returncode == 3, before.stderr
            alerts = json.loads((tmp_path / "before.json").read_text())["alerts"]
            assert {(a["site"], a["metric"]) for a in alerts} >= {("west", "observed_expected")}
            assert all(a["value"] > 1.25 for a in alerts if a["metric"] == "observed_expected")  # underpredicts
        for run in runs:
            done = run.wait()
            assert done.returncode == 0 and "answered" in done.stdout, done.stderr
        text = _cli(
            "federate", "combine", "--mailbox", str(box), "--key", str(keys / "coordinator.key.pem"),
            "--shelf", str(coordinator_shelf), "--out", str(child),
        )  # fmt: skip
        if "converged" in text:
            break
    assert "converged in" in text, text
    lap("kgrid monitor 1.0.0 (west) alongside the federated study")

    # The shift recovers the truth: cloglog p' = ln θ + cloglog p at both horizons.
    meta = json.loads((child / "metadata.json").read_text())
    (entry,) = meta["lineage"]
    record = entry["record"]
    assert entry["parent_digest"] == parent.content_digest
    assert {s["site"] for s in record["federation"]["rounds"][-1]["sites"]} == {s.name for s in sites}
    truth = float(np.log(baseline_hazard_factor(RISK_RATIO)))
    shift = record["parameters"]
    assert set(shift) == {"a[risk_2y]", "a[risk_5y]"}
    for name, value in shift.items():
        assert abs(value - truth) < 3 * record["standard_errors"][name], (name, value, truth)

    # 3. The curator's path: validate, pack, sign, publish to every site over HTTP, deprecate the parent.
    _cli("validate", str(child))
    archive = tmp_path / "kfre-1.1.0.zip"
    _cli("pack", str(child), "--output", str(archive))
    _cli("sign", str(archive), "--key", str(tmp_path / "curator" / "curator.key.pem"))
    probe = {"age": 70, "sex": "female", "egfr": 22, "uacr": 900.0}
    expected = parent.call("four-variable", probe).result
    for site in sites:
        _cli("publish", str(archive), "--to", site.url, env={"KGRID_TOKEN": PUBLISH_TOKEN})
        _cli(
            "status", "kfre@1.0.0", "--set", "deprecated", "--successor", "kfre@1.1.0", "--to", site.url,
            env={"KGRID_TOKEN": ADMIN_TOKEN},
        )  # fmt: skip
        served = httpx.get(f"{site.url}/kos/kfre/1.1.0", timeout=30)
        assert served.status_code == 200, served.text
        answer = httpx.post(f"{site.url}{ENDPOINT}", json=probe, timeout=30).json()
        assert answer["info"]["version"] == "1.1.0"
        for output, value in answer["result"].items():
            a = shift[f"a[{output}]"]
            updated = -np.expm1(-np.exp(a + cloglog(np.array([expected[output]]))))[0]
            assert value == pytest.approx(updated, rel=1e-6)
    lap("validate, pack, sign, publish to 3 sites")

    # 4. Fresh patients from the same truth, now answered by 1.1.0.
    fresh = _see_patients(sites, parent, FRESH_PATIENTS, seed=16, tag="b")
    assert {a["info"]["version"] for answers in fresh for a in answers} == {"1.1.0"}
    lap("calls and outcomes on 1.1.0")
    runs = [_monitor(s, "kfre@1.1.0", tmp_path / f"after-{s.name}.json") for s in sites]
    runs.append(_monitor(sites[0], "kfre@1.0.0", tmp_path / "parent-north.json"))
    done = [r.wait() for r in runs]
    for site, result in zip(sites, done, strict=False):
        assert result.returncode == 0, result.stderr
        report = json.loads((tmp_path / f"after-{site.name}.json").read_text())
        assert report["alerts"] == []
        for perf in _performance(report):
            assert perf["n"] == FRESH_PATIENTS and perf["events"] >= 10, perf
            assert 0.8 <= perf["observed_expected"]["value"] <= 1.25, (site.name, perf["observed_expected"])
            assert 0.8 <= perf["calibration_slope"]["value"] <= 1.2, (site.name, perf["calibration_slope"])
    assert done[-1].returncode == 3, done[-1].stderr
    parent_alerts = json.loads((tmp_path / "parent-north.json").read_text())["alerts"]
    assert ("north", "observed_expected") in {(a["site"], a["metric"]) for a in parent_alerts}
    lap("kgrid monitor 1.1.0 at 3 sites and 1.0.0 at north")
    print("timings (s):", timings, "total", round(sum(timings.values()), 1))
