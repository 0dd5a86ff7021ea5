"""The CDS Hooks routes are part of `kgrid serve`, over the bundled KOs, with auth on by default."""

from __future__ import annotations

from pathlib import Path

import httpx
from activator_server import Server

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
HOOK = {
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "context": {"userId": "Practitioner/1", "patientId": "p1"},
    "prefetch": {
        "patient": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1963-01-01"},
    },
}


def test_served_activator_lists_cds_services_and_requires_a_token(tmp_path: Path) -> None:
    with Server(SHELF, log=tmp_path / "log") as server:
        services = httpx.get(server.url + "/cds-services").json()["services"]
        ids = {s["id"] for s in services}
        assert "kfre-1.0.0-four-variable" in ids and "ckd-epi-egfr-2.0.0-egfr-cr" in ids
        call = httpx.post(server.url + "/cds-services/kfre-1.0.0-four-variable", json=HOOK)
        assert call.status_code == 401


def test_no_auth_mode_answers_with_a_card_naming_missing_data(tmp_path: Path) -> None:
    with Server(SHELF, "--cds-no-auth", log=tmp_path / "log") as server:
        call = httpx.post(
            server.url + "/cds-services/kfre-1.0.0-four-variable",
            json={
                **HOOK,
                "prefetch": {
                    **HOOK["prefetch"],
                    "egfr": {"resourceType": "Bundle", "type": "searchset"},
                    "uacr": {"resourceType": "Bundle", "type": "searchset"},
                },
            },
        )
        assert call.status_code == 200, call.text
        cards = call.json()["cards"]
        assert cards and "egfr" in cards[0]["detail"].lower()
        assert "--cds-no-auth" in server.read_log()
