"""The HTTP mailbox: sites poll a real `kgrid serve --federation` process; they never listen."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
from activator_server import Server
from click.testing import CliRunner
from test_federation_cli import SITES, _plan, invoke, network  # noqa: F401 - the module's fixture

import kgrid_py
from kgrid_py.cli import cli
from kgrid_py.curation.signing import load_private_key
from kgrid_py.learning import federation as fd
from kgrid_py.learning.evidence import horizons_of
from kgrid_py.learning.mailbox import Mailbox
from kgrid_py.learning.plans import dumps, sign
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.store_evidence import evidence_from_store


def _site(root: Path, url: str, site: str, token: str) -> str:
    return invoke(
        "federate", "site", url, "--site", site, "--key", str(root / "keys" / f"{site}.key.pem"),
        "--trust", str(root / "trust"), "--store", f"sqlite:///{root / f'{site}.db'}", "--shelf", str(root / "shelf"),
        "--token", token,
    )  # fmt: skip


def test_sites_poll_the_coordinator_and_the_study_converges(network: Path, tmp_path: Path) -> None:  # noqa: F811
    root = network
    shelf = tmp_path / "shelf"
    shutil.copytree(root / "shelf", shelf)
    studies = tmp_path / "studies"
    box = studies / "kfre-2025"
    _plan(root, box, "slope")
    tokens = {s: invoke("federate", "token", "--mailbox", str(box), "--site", s).strip() for s in SITES}
    key = str(root / "keys" / "coordinator.key.pem")
    with Server(shelf, "--federation", str(studies), "--no-watch") as server:
        url = f"{server.url}/federation/kfre-2025"
        assert httpx.get(url + "/plan").status_code == 401
        assert httpx.get(url + "/plan", headers={"Authorization": "Bearer nope"}).status_code == 403
        first_round: dict[str, dict] = {}
        for _ in range(10):
            for site in SITES:
                _site(root, url, site, tokens[site])
            if not first_round:
                first_round = {d["payload"]["site"]: d for d in Mailbox(box).messages(1)}
            text = invoke("federate", "combine", "--mailbox", str(box), "--key", key, "--shelf", str(shelf))
            if "converged" in text:
                break
        assert "converged in" in text
        status = httpx.get(url + "/status", headers={"Authorization": f"Bearer {tokens['west']}"}).json()
        assert status["converged"] is True and status["waiting"] == []

        # Full precision: what the server stored is, float for float, what the site computes here.
        ko = kgrid_py.load("kfre@1.0.0", shelf=root / "shelf")
        plan = Mailbox(box).plan_documents()[0]["payload"]
        kind, horizons = horizons_of(ko, "four-variable", None)
        with CaptureStore.open(f"sqlite:///{root / 'north.db'}") as store:
            evidence = evidence_from_store(store, ko, "four-variable", "north", kind, horizons)
        local = fd.site_message(
            plan, evidence, "north", load_private_key(root / "keys" / "north.key.pem"), ko.content_digest
        )
        assert local["payload"]["statistics"] == first_round["north"]["payload"]["statistics"]

        # Refusals: another site's token, a stale round, a forged body, a repeat of a stored message.
        north = first_round["north"]
        auth = {"Content-Type": "application/json"}
        post = lambda doc, site: httpx.post(  # noqa: E731
            url + "/messages", content=dumps(doc), headers={**auth, "Authorization": f"Bearer {tokens[site]}"}
        )
        assert post(north, "south").status_code == 403
        stale = post(north, "north")
        assert stale.status_code == 422 and "round 1 is closed" in stale.json()["detail"]
        latest = Mailbox(box).messages(len(Mailbox(box).plan_documents()))
        mine = next(d for d in latest if d["payload"]["site"] == "north")
        assert post(mine, "north").status_code == 200  # the same message again: harmless
        forged = json.loads(json.dumps(mine))
        forged["payload"]["counts"]["n"] += 1
        answer = post(forged, "north")
        assert answer.status_code == 403 and "does not verify" in answer.json()["detail"]
        assert (
            httpx.post(
                url + "/messages",
                content=b"x" * 300_000,
                headers={**auth, "Authorization": f"Bearer {tokens['north']}"},
            ).status_code
            == 413
        )
    assert (shelf / "kfre" / "1.1.0" / "metadata.json").exists()
    result = json.loads((box / "result.json").read_text())
    meta = json.loads((shelf / "kfre" / "1.1.0" / "metadata.json").read_text())
    assert result["parameters"] == meta["lineage"][-1]["record"]["parameters"]


def test_a_forged_message_is_refused_before_it_is_stored(network: Path, tmp_path: Path) -> None:  # noqa: F811
    root = network
    studies = tmp_path / "studies"
    box = studies / "s1"
    _plan(root, box, "intercept")
    token = invoke("federate", "token", "--mailbox", str(box), "--site", "north").strip()
    with Server(root / "shelf", "--federation", str(studies), "--no-watch") as server:
        url = f"{server.url}/federation/s1"
        bad = CliRunner().invoke(
            cli,
            ["federate", "site", url, "--site", "north", "--key", str(root / "keys" / "south.key.pem"),
             "--trust", str(root / "trust"), "--store", f"sqlite:///{root / 'north.db'}", "--shelf",
             str(root / "shelf"), "--token", token],
        )  # fmt: skip
        assert bad.exit_code == 1 and "not the one the plan names" in bad.output
        plan = Mailbox(box).latest_plan()
        payload = {"format": "kgrid-federation-message/1", "site": "north", "round": 1, "study": "s1"}
        fake = sign(payload, load_private_key(root / "keys" / "south.key.pem"))  # north's name, south's key
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        answer = httpx.post(url + "/messages", content=dumps(fake), headers=headers)
        assert answer.status_code == 403 and "plan expects key" in answer.json()["detail"]
        assert not (box / "messages").exists() and plan == Mailbox(box).latest_plan()
