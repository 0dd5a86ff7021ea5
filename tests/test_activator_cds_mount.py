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
    with Server(SHELF, "--cds-db", str(tmp_path / "cds.sqlite3"), log=tmp_path / "log") as server:
        services = httpx.get(server.url + "/cds-services").json()["services"]
        ids = {s["id"] for s in services}
        assert "kfre-1.0.0-four-variable" in ids and "ckd-epi-egfr-2.0.0-egfr-cr" in ids
        call = httpx.post(server.url + "/cds-services/kfre-1.0.0-four-variable", json=HOOK)
        assert call.status_code == 401


def test_no_auth_mode_answers_with_a_card_naming_missing_data(tmp_path: Path) -> None:
    with Server(SHELF, "--cds-no-auth", "--cds-db", str(tmp_path / "cds.sqlite3"), log=tmp_path / "log") as server:
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


def test_hostile_requests_get_4xx_never_500(tmp_path: Path) -> None:
    """Inputs a review found crashing the server: each now gets a clear 4xx."""
    kfre = '{"age": 63, "sex": "female", "egfr": 45, "uacr": 30'
    with Server(SHELF, "--cds-no-auth", "--cds-db", str(tmp_path / "cds.sqlite3"), log=tmp_path / "log") as server:
        post = lambda path, content: httpx.post(  # noqa: E731
            server.url + path, content=content, headers={"Content-Type": "application/json"}
        )
        duplicate = post("/kfre/1.0.0/four-variable", kfre + ', "age": 64}')
        assert duplicate.status_code == 400 and "duplicate key" in duplicate.json()["detail"]
        exponent = post("/kfre/1.0.0/four-variable", kfre.replace("63", '{"value": 63, "unit": "a99999999"}') + "}")
        assert exponent.status_code == 422
        nested = post("/cds-services/kfre-1.0.0-four-variable", "[" * 100_000)
        assert nested.status_code == 400
        bad_date = {
            **HOOK,
            "prefetch": {
                **HOOK["prefetch"],
                "egfr": {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "entry": [
                        {
                            "resource": {
                                "resourceType": "Observation",
                                "id": "o1",
                                "status": "final",
                                "subject": {"reference": "Patient/p1"},
                                "code": {"coding": [{"system": "http://loinc.org", "code": "33914-3"}]},
                                "effectiveDateTime": "2026-99-99",
                                "valueQuantity": {
                                    "value": 45,
                                    "system": "http://unitsofmeasure.org",
                                    "code": "mL/min/{1.73_m2}",
                                },
                            }
                        }
                    ],
                },
            },
        }
        assert httpx.post(server.url + "/cds-services/kfre-1.0.0-four-variable", json=bad_date).status_code < 500
        feedback = {
            "feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}] * 101
        }
        assert (
            httpx.post(server.url + "/cds-services/kfre-1.0.0-four-variable/feedback", json=feedback).status_code == 413
        )
        assert "Traceback" not in server.read_log()
