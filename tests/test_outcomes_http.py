"""``POST /outcomes`` against a real ``kgrid serve --capture`` (SQLite and a real PostgreSQL).

Calls are made through the API with ``X-Subject-Id``, so the server keys the patients; outcome
rows are then posted by patient id and must land under the same subject keys. Checked: the admin
role (401/403), 422 with every bad row's number and nothing stored, idempotent re-posts, a FHIR
Bundle matched against KFRE's declared codes, malformed FHIR, the size bound, and capture off.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from activator_server import Server
from browser import ADMIN_TOKEN, PUBLISH_TOKEN, build_ui_shelf, write_tokens
from pg import capture_url, pg_url  # noqa: F401 - fixtures

from activator.routes.outcomes import MAX_OUTCOME_BODY_BYTES
from kgrid_py.learning.store import CaptureStore, outcomes
from kgrid_py.learning.subjects import SubjectKeyer

SECRET = secrets.token_hex(32)
API = "/endpoints/kfre/four-variable?v=1.0.0"
POST = "/outcomes?ko=kfre&function=four-variable"
PATIENT = {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}
TODAY = dt.datetime.now(dt.UTC).date()


def _day(offset: int) -> str:
    return (TODAY + dt.timedelta(days=offset)).isoformat()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _serve(root: Path, *extra: str) -> Server:
    shelf = build_ui_shelf(root)
    args = ["--tokens", str(write_tokens(root)), "--no-watch", "--no-access-log", "--site", "north", *extra]
    server = Server(shelf, *args, log=root / "server.log")
    server.wait_ready()
    return server


def _stored(url: str) -> list[dict[str, Any]]:
    with CaptureStore.open(url) as store, store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(outcomes).order_by(outcomes.c.subject_key)).mappings()]


def test_post_outcomes_keys_checks_and_is_idempotent(tmp_path: Path, capture_url: str) -> None:  # noqa: F811
    secret = tmp_path / "subject.secret"
    secret.write_text(SECRET + "\n")
    server = _serve(tmp_path, "--capture", capture_url, "--subject-secret-file", str(secret))
    good = [
        {"patient_id": "p-1", "event": 1, "event_date": _day(30), "followup_date": _day(30)},
        {"patient_id": "p-2", "event": 0, "followup_date": _day(400), "competing_event": 0},
        {"patient_id": "p-3", "event": 0, "competing_event": 1, "competing_date": _day(90)},
    ]
    bad = [
        good[0],
        {"patient_id": "p-2", "event": 1},  # an event without its date
        {"patient_id": "p-3", "event": 0, "followup_date": _day(-3)},  # before the subject's first call
        {"patient_id": "p-1", "event": "maybe", "event_date": _day(1)},
        {"patient_id": "p-1", "event": 1, "event_date": _day(1), "mrn": "123"},  # unknown field
        "not a row",
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Procedure",
                    "subject": {"reference": "Patient/p-4"},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "108241001"}]},
                    "performedDateTime": _day(200),
                }
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "subject": {"reference": "Patient/p-5"},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "419620001"}]},
                    "effectiveDateTime": _day(10),
                }
            },
        ],
    }
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(1, 6):
                answer = client.post(API, json=PATIENT, headers={"X-Subject-Id": f"p-{i}"})
                assert answer.status_code == 200, answer.text
            denied = [
                client.post(POST, json={"rows": good}).status_code,
                client.post(POST, json={"rows": good}, headers=_auth("never-issued-token")).status_code,
                client.post(POST, json={"rows": good}, headers=_auth(PUBLISH_TOKEN)).status_code,
            ]
            admin = _auth(ADMIN_TOKEN)
            refused = client.post(POST, json={"rows": bad}, headers=admin)
            after_refused = _stored(capture_url)
            first = client.post(POST, json={"rows": good}, headers=admin)
            again = client.post(POST, json=good, headers=admin)  # a bare array works too
            fhir = client.post(POST, json=bundle, headers={**admin, "Content-Type": "application/fhir+json"})
            malformed = [
                client.post(POST, json={"resourceType": "Patient"}, headers=admin),
                client.post(
                    POST,
                    json={"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Encounter"}}]},
                    headers=admin,
                ),
                client.post(
                    POST,
                    json={
                        "resourceType": "Bundle",
                        "entry": [
                            {
                                "resource": {
                                    "resourceType": "Condition",
                                    "subject": {"reference": "Patient/p-1"},
                                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                                    "onsetDateTime": _day(5),
                                }
                            }
                        ],
                    },
                    headers=admin,
                ),
            ]
            unnamed = client.post("/outcomes", json={"rows": good}, headers=admin)
            unknown_ko = client.post("/outcomes?ko=nope&function=four-variable", json={"rows": good}, headers=admin)
            no_outcome = client.post("/outcomes?ko=demo-bmi&function=bmi", json={"rows": good}, headers=admin)
            not_json = client.post(POST, content=b"patient_id,event", headers={**admin, "Content-Type": "text/csv"})
            too_big = client.post(
                POST,
                content=b" " * (MAX_OUTCOME_BODY_BYTES + 1),
                headers={**admin, "Content-Type": "application/json"},
            )
    finally:
        server.stop()
    assert denied == [401, 401, 403]
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["refused"] == 5 and problem["rows"] == 6 and "nothing was stored" in problem["detail"]
    by_row = {int(e["row"]): e["detail"] for e in problem["errors"]}
    assert sorted(by_row) == [2, 3, 4, 5, 6]
    assert "needs its event date" in by_row[2]
    assert f"before the subject's first call ({TODAY.isoformat()})" in by_row[3]
    assert "must be 0 or 1" in by_row[4] and "unknown field(s) mrn" in by_row[5] and "not a JSON object" in by_row[6]
    assert after_refused == []  # the good first row was not stored either

    assert first.status_code == 200, first.text
    assert first.json() | {"problems": None} == {
        "rows": 3,
        "inserted": 3,
        "duplicates": 0,
        "unknown_subjects": 0,
        "refused": 0,
        "problems": None,
        "site": "north",
        "outcome": "kidney_failure",
    }
    assert again.status_code == 200 and (again.json()["inserted"], again.json()["duplicates"]) == (0, 3)
    assert fhir.status_code == 200, fhir.text
    assert (fhir.json()["inserted"], fhir.json()["unknown_subjects"]) == (2, 0)
    assert [m.status_code for m in malformed] == [422, 422, 422]
    assert "not a FHIR Bundle" in malformed[0].json()["detail"]
    assert "is not one of Condition, Procedure, Observation" in malformed[1].json()["errors"][0]["detail"]
    assert "match none declared" in malformed[2].json()["errors"][0]["detail"]
    assert unnamed.status_code == 400 and unknown_ko.status_code == 404 and no_outcome.status_code == 422
    assert not_json.status_code == 415 and too_big.status_code == 413

    stored = _stored(capture_url)
    keyer = SubjectKeyer(SECRET)
    keys = {keyer.key(f"p-{i}"): f"p-{i}" for i in range(1, 6)}
    assert len(stored) == 5 and {r["subject_key"] for r in stored} == set(keys)
    assert all(r["site"] == "north" and r["outcome"] == "kidney_failure" for r in stored)
    assert not any("p-" in str(value) for r in stored for value in r.values())  # ids never stored
    by_patient = {keys[r["subject_key"]]: r for r in stored}
    assert (by_patient["p-1"]["event"], by_patient["p-1"]["event_date"]) == (1, _day(30))
    assert (by_patient["p-3"]["competing_event"], by_patient["p-3"]["competing_date"]) == (1, _day(90))
    assert (by_patient["p-4"]["event"], by_patient["p-4"]["event_date"]) == (1, _day(200))
    assert (by_patient["p-5"]["competing_event"], by_patient["p-5"]["competing_date"]) == (1, _day(10))
    assert by_patient["p-4"]["source"] == "http:ops"


@pytest.mark.parametrize("capture", [False, True], ids=["capture-off", "no-secret"])
def test_post_outcomes_needs_capture_and_a_secret(tmp_path: Path, capture: bool) -> None:
    extra = ["--capture", f"sqlite:///{tmp_path / 'c.sqlite3'}"] if capture else []
    server = _serve(tmp_path, *extra)
    try:
        answer = httpx.post(f"{server.url}{POST}", json={"rows": []}, headers=_auth(ADMIN_TOKEN))
    finally:
        server.stop()
    if capture:
        assert answer.status_code == 409 and "subject secret" in answer.json()["detail"]
    else:
        assert answer.status_code == 404 and "capture is off" in answer.json()["detail"]
