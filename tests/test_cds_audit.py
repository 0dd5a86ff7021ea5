"""A refused CDS Hooks token is a security event: it goes to the shelf's audit log, without the token."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from activator_server import Server
from test_cds_hooks import _jwks, token

from kgrid_py.curation.audit import read_audit

REPO = Path(__file__).resolve().parent.parent
ISSUER = "https://ehr.example.org"
PUBLIC = "https://cds.example.org"
EGFR = "ckd-epi-egfr-2.0.0-egfr-cr"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("cds-audit")
    shelf = folder / "shelf"
    shutil.copytree(REPO / "knowledge_objects" / "ckd-epi-egfr" / "2.0.0", shelf / "ckd-epi-egfr" / "2.0.0")
    (folder / "jwks.json").write_text(json.dumps(_jwks()))
    (folder / "issuers.json").write_text(json.dumps({"issuers": [{"iss": ISSUER, "jwks_file": "jwks.json"}]}))
    args = ["--cds-issuers", str(folder / "issuers.json"), "--public-url", PUBLIC, "--no-verify-vectors"]
    with Server(shelf, *args, log=folder / "log") as server:
        yield server, shelf


def _call(server: Server, auth: str | None) -> httpx.Response:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": {"patientId": "p1"}}
    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
    return httpx.post(f"{server.url}/cds-services/{EGFR}", json=body, headers=headers)


def test_refused_cds_tokens_are_audited_without_the_token(served: tuple[Server, Path]) -> None:
    server, shelf = served
    forged = token("http://evil.example/cds-services/" + EGFR)
    assert _call(server, forged).status_code == 401
    assert _call(server, None).status_code == 401
    refusals = [r for r in read_audit(shelf / ".kgrid" / "audit.jsonl") if r.get("action") == "authorize"]
    assert len(refusals) == 2
    assert all(r["outcome"] == "refused" and r["http_status"] == 401 and r["service"] == EGFR for r in refusals)
    assert "aud" in refusals[0]["reason"]
    log_text = (shelf / ".kgrid" / "audit.jsonl").read_text()
    assert forged not in log_text and forged.split(".")[2] not in log_text


def test_a_flood_of_refusals_is_rate_limited_and_counted(served: tuple[Server, Path]) -> None:
    server, shelf = served
    before = len(read_audit(shelf / ".kgrid" / "audit.jsonl"))
    with httpx.Client() as client:
        body = {"hook": "patient-view", "hookInstance": "x", "context": {"patientId": "p1"}}
        for _ in range(60):
            client.post(f"{server.url}/cds-services/{EGFR}", json=body)
    records = read_audit(shelf / ".kgrid" / "audit.jsonl")[before:]
    assert len(records) < 60  # at most 20 a second per worker reach the disk
    time.sleep(1.1)
    assert _call(server, None).status_code == 401  # the next record, a second later, counts what was suppressed
    last = read_audit(shelf / ".kgrid" / "audit.jsonl")[-1]
    assert last["suppressed_before"] == 60 - len(records)
