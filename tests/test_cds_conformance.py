"""CDS Hooks 2.0 conformance, run against the real served activator (``kgrid serve --cds-no-auth``).

Which client: an independent one was tried first. ``healthchain`` 0.16.1 (the only CDS Hooks client
in the registries) pins ``httpx<0.28``, ``fhir-resources<8.2`` and ``fastapi<0.138``, which conflict
with this project's httpx 0.28, fhir.resources 8.3 and FastAPI 0.165, so it cannot be installed
beside it. This suite is therefore written from the CDS Hooks 2.0 specification text
(cds-hooks.hl7.org/2.0): Discovery (``services`` array; each service has ``hook``, ``description``,
``id``, optional ``title`` and ``prefetch`` map of string templates), the HTTP request (``hook``,
``hookInstance`` and ``context`` required; ``fhirAuthorization`` needs ``fhirServer``), the response
(``cards`` array; each card has ``summary`` under 140 characters, ``indicator`` one of info, warning,
critical, and ``source`` with a ``label``; ``uuid`` is what feedback refers to), 412 when the
service cannot obtain the data it needs, and Feedback (``feedback`` array of ``card``, ``outcome``
accepted or overridden, ``outcomeTimestamp``). The client is httpx, speaking only the wire format.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from activator_server import Server
from fhir_data import plco_resources

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
PLCO = "plcom2012-1.0.0-risk"
INDICATORS = {"info", "warning", "critical"}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("conf")
    with Server(SHELF, "--cds-no-auth", "--cds-db", str(folder / "cds.sqlite3"), log=folder / "log") as server:
        yield server.url


def _request(prefetch: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": "p1"},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def _today_minus(days: int) -> str:
    return datetime.fromtimestamp(datetime.now(UTC).timestamp() - days * 86400, UTC).date().isoformat()


def _check_card(card: dict[str, Any]) -> None:
    assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140
    assert card["indicator"] in INDICATORS
    assert isinstance(card["source"], dict) and isinstance(card["source"]["label"], str) and card["source"]["label"]
    assert UUID.match(card["uuid"])
    assert isinstance(card.get("detail", ""), str)
    for key in ("suggestions", "links"):
        assert key not in card or isinstance(card[key], list)


def test_discovery_shape(base: str) -> None:
    answer = httpx.get(base + "/cds-services")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    services = answer.json()["services"]
    assert isinstance(services, list) and services
    ids = [s["id"] for s in services]
    assert len(ids) == len(set(ids))
    for service in services:
        assert isinstance(service["hook"], str) and isinstance(service["description"], str)
        assert isinstance(service["id"], str) and "/" not in service["id"]
        assert isinstance(service.get("title", ""), str)
        for key, template in service.get("prefetch", {}).items():
            assert isinstance(key, str) and isinstance(template, str) and "{{context.patientId}}" in template
    plco = next(s for s in services if s["id"] == PLCO)
    assert plco["hook"] == "patient-view"
    assert "FamilyMemberHistory?patient={{context.patientId}}" in plco["prefetch"]["family_lung_cancer_history"]


def test_service_call_returns_conformant_cards(base: str) -> None:
    answer = httpx.post(f"{base}/cds-services/{PLCO}", json=_request(plco_resources(when=_today_minus(10))))
    assert answer.status_code == 200
    cards = answer.json()["cards"]
    assert isinstance(cards, list) and len(cards) == 1
    _check_card(cards[0])
    assert "cannot compute" not in cards[0]["summary"]


def test_cards_for_missing_data_are_conformant_too(base: str) -> None:
    prefetch = plco_resources(when=_today_minus(10))
    prefetch["bmi"] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    (card,) = httpx.post(f"{base}/cds-services/{PLCO}", json=_request(prefetch)).json()["cards"]
    _check_card(card)
    assert "bmi" in card["summary"]


@pytest.mark.parametrize("drop", ["hook", "hookInstance", "context"])
def test_required_request_fields(base: str, drop: str) -> None:
    body = _request(plco_resources())
    del body[drop]
    assert httpx.post(f"{base}/cds-services/{PLCO}", json=body).status_code == 400


def test_fhir_authorization_needs_fhir_server(base: str) -> None:
    body = _request(plco_resources()) | {
        "fhirAuthorization": {
            "access_token": "t",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "x",
            "subject": "s",
        }
    }
    assert httpx.post(f"{base}/cds-services/{PLCO}", json=body).status_code == 400


def test_412_when_prefetch_is_missing_and_no_fhir_server(base: str) -> None:
    answer = httpx.post(f"{base}/cds-services/{PLCO}", json=_request(None))
    assert answer.status_code == 412


def test_unknown_service_is_404(base: str) -> None:
    assert httpx.post(f"{base}/cds-services/no-such-service", json=_request({})).status_code == 404


def test_feedback(base: str) -> None:
    answer = httpx.post(f"{base}/cds-services/{PLCO}", json=_request(plco_resources(when=_today_minus(10))))
    card = answer.json()["cards"][0]
    feedback = {
        "feedback": [
            {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": datetime.now(UTC).isoformat()},
        ]
    }
    assert httpx.post(f"{base}/cds-services/{PLCO}/feedback", json=feedback).status_code == 200
    bad = {"feedback": [{"card": card["uuid"], "outcome": "maybe", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
    assert httpx.post(f"{base}/cds-services/{PLCO}/feedback", json=bad).status_code == 400
