"""Capture on the OIP and CDS Hooks channels, and CDS feedback linked to the call its card is.

A real ``kgrid serve`` over the bundled shelf (KFRE), with JWT-verified CDS Hooks, on SQLite and
on a real PostgreSQL. The card's ``uuid`` is the capture id in UUID form; feedback lands in the
capture store's ``feedback`` table with that id.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from activator_server import Server
from fhir_data import patient, searchset
from pg import capture_url, pg_url  # noqa: F401 - fixtures
from test_cds_hooks import ISSUER, _jwks, kfre_prefetch, token

from kgrid_py.learning.ids import id_from_uuid, id_to_uuid
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
PUBLIC = "https://cds.example.org"
KFRE = "kfre-1.0.0-four-variable"
SECRET = secrets.token_hex(32)


@pytest.fixture
def served(tmp_path: Path, capture_url: str) -> Iterator[tuple[Server, str]]:  # noqa: F811
    (tmp_path / "jwks.json").write_text(json.dumps(_jwks()))
    (tmp_path / "issuers.json").write_text(json.dumps({"issuers": [{"iss": ISSUER, "jwks_file": "jwks.json"}]}))
    (tmp_path / "site.secret").write_text(SECRET)
    args = [
        *("--cds-issuers", str(tmp_path / "issuers.json"), "--public-url", PUBLIC),
        *("--cds-db", str(tmp_path / "cds.sqlite3"), "--no-verify-vectors", "--no-watch", "--no-access-log"),
        *("--capture", capture_url, "--site", "north", "--subject-secret-file", str(tmp_path / "site.secret")),
    ]
    with Server(SHELF, *args, log=tmp_path / "log") as server:
        yield server, capture_url


def _cds(server: Server, body: dict[str, Any], path: str = "") -> httpx.Response:
    service_path = f"/cds-services/{KFRE}{path}"
    headers = {"Authorization": f"Bearer {token(PUBLIC + service_path)}"}
    return httpx.post(server.url + service_path, json=body, headers=headers, timeout=30)


def _call(prefetch: dict[str, Any], patient_id: str = "patient-42") -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": patient_id},
        # the fixtures' observations are about Patient/p1: make them this patient's
        "prefetch": json.loads(
            json.dumps({**prefetch, "patient": patient(patient_id)}).replace("Patient/p1", f"Patient/{patient_id}")
        ),
    }


def _feedback(card: str, outcome: str = "accepted", **extra: Any) -> dict[str, Any]:
    return {"feedback": [{"card": card, "outcome": outcome, "outcomeTimestamp": "2026-05-01T10:00:00Z", **extra}]}


def test_cds_call_records_keyed_patient_and_card_uuid_is_capture_id(served: tuple[Server, str]) -> None:
    server, url = served
    answer = _cds(server, _call(kfre_prefetch()))
    missing = _cds(server, _call(kfre_prefetch(uacr=searchset()), patient_id="patient-7"))
    assert answer.status_code == 200 and missing.status_code == 200, answer.text + missing.text
    card, missing_card = answer.json()["cards"][0], missing.json()["cards"][0]
    rows = {r["id"]: r for r in CaptureStore.open(url).calls_table().to_pylist()}
    record = rows[id_from_uuid(card["uuid"])]
    assert id_to_uuid(record["id"]) == card["uuid"]
    assert record["error"] is None, record["error"]
    assert (record["channel"], record["caller"], record["site"], record["status"]) == (
        "cds-hooks",
        ISSUER,
        "north",
        "ok",
    )
    assert record["subject_key"] == SubjectKeyer(SECRET).key("patient-42")
    outputs = json.loads(record["outputs"])
    assert set(outputs) == {"risk_2y", "risk_5y"} and f"{100 * outputs['risk_5y']:.1f}" in card["summary"]
    refused = rows[id_from_uuid(missing_card["uuid"])]
    assert refused["status"] == "refused" and "missing inputs: uacr" in refused["error"]
    assert refused["subject_key"] == SubjectKeyer(SECRET).key("patient-7")
    assert "patient-42" not in json.dumps(list(rows.values()))


def test_feedback_goes_to_the_capture_store_linked_to_the_call(served: tuple[Server, str], tmp_path: Path) -> None:
    server, url = served
    card = _cds(server, _call(kfre_prefetch())).json()["cards"][0]
    reason = {"reason": {"code": "patient-declined", "display": "Patient declined"}, "userComment": "prefers to wait"}
    accepted = _cds(server, _feedback(card["uuid"]), path="/feedback")
    overridden = _cds(server, _feedback(card["uuid"], "overridden", overrideReason=reason), path="/feedback")
    unknown = _cds(server, _feedback(str(uuid.uuid4())), path="/feedback")
    not_uuid = _cds(server, _feedback("card-1"), path="/feedback")
    assert (accepted.status_code, overridden.status_code) == (200, 200)
    assert (unknown.status_code, not_uuid.status_code) == (422, 422)
    assert "is not a card this service answered with" in unknown.json()["detail"]
    rows = CaptureStore.open(url).feedback_table().to_pylist()
    assert [(r["capture_id"], r["kind"], r["caller"], r["site"]) for r in rows] == [
        (id_from_uuid(card["uuid"]), "accepted", ISSUER, "north"),
        (id_from_uuid(card["uuid"]), "overridden", ISSUER, "north"),
    ]
    assert json.loads(rows[1]["override_reason"]) == reason
    assert json.loads(rows[1]["detail"])["outcomeTimestamp"] == "2026-05-01T10:00:00Z"
    with sqlite3.connect(tmp_path / "cds.sqlite3") as db:  # not also in the CDS store
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "feedback" not in tables or db.execute("SELECT count(*) FROM feedback").fetchone() == (0,)


def _tensor(name: str, values: list[Any]) -> dict[str, Any]:
    datatype = "BYTES" if isinstance(values[0], str) else "FP64"
    return {"name": name, "shape": [len(values)], "datatype": datatype, "data": values}


def test_oip_records_one_row_per_tensor_row(served: tuple[Server, str]) -> None:
    server, url = served
    infer = f"{server.url}/v2/models/kfre.four-variable/infer"
    columns = {"age": [63.0, 55.0], "sex": ["female", "male"], "egfr": [45.0, 38.0], "uacr": [30.0, 150.0]}
    good = httpx.post(infer, json={"inputs": [_tensor(k, v) for k, v in columns.items()]})
    bad = httpx.post(
        infer, json={"inputs": [_tensor(k, [*v, v[0]] if k != "egfr" else [*v, -5.0]) for k, v in columns.items()]}
    )
    assert good.status_code == 200 and bad.status_code == 400
    rows = CaptureStore.open(url).calls_table().to_pylist()
    assert [(r["channel"], r["status"]) for r in rows] == [("oip", "ok")] * 2 + [("oip", "refused")] * 3
    risk = {t["name"]: t["data"] for t in good.json()["outputs"]}["risk_5y"]
    assert [json.loads(r["outputs"])["risk_5y"] for r in rows[:2]] == pytest.approx(risk, rel=1e-12)
    assert json.loads(rows[1]["inputs_received"]) == {"age": 55.0, "sex": "male", "egfr": 38.0, "uacr": 150.0}
    assert all("not answered" in r["error"] for r in rows[2:4]) and "egfr" in rows[4]["error"]
