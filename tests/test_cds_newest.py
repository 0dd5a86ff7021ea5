"""The newest value, always: paged FHIR results are followed (bounded) and a card says when it cannot be sure.

A real uvicorn server runs the CDS Hooks routes; a real loopback FHIR server pages its search
results oldest first (ignoring ``_sort``, as a server may), so only following ``next`` finds the
newest creatinine.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fhir_data import creatinine, patient, quantity_obs, searchset
from test_cds_hooks import _free_port, _serve

from activator.routes.cds_hooks import CdsHooks, CdsSettings
from kgrid_py.fhir import FhirData, map_inputs
from kgrid_py.ko import KnowledgeObject
from kgrid_py.metadata import Code

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
EGFR = "ckd-epi-egfr-2.0.0-egfr-cr"


def _days_ago(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() - days * 86400))


class _PagingFhir:
    """A FHIR server that pages searches ``page_size`` at a time, oldest first, whatever ``_sort`` says."""

    def __init__(self, page_size: int = 1) -> None:
        self.page_size = page_size
        self.resources: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.base = ""

    def page(self, kind: str, offset: int) -> dict[str, Any]:
        hits = sorted((r for r in self.resources if r["resourceType"] == kind), key=lambda r: r["effectiveDateTime"])
        chunk = hits[offset : offset + self.page_size]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "self", "url": f"{self.base}/{kind}?_offset={offset}"}],
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in chunk],
        }
        if offset + self.page_size < len(hits):
            bundle["link"].append({"relation": "next", "url": f"{self.base}/{kind}?_offset={offset + self.page_size}"})
        return bundle

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fhir = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fhir.paths.append(self.path)
                url = urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                if len(parts) == 3 and parts[1] == "Patient":
                    return self._send(patient(pid=parts[2]))
                offset = int(parse_qs(url.query).get("_offset", ["0"])[0])
                return self._send(fhir.page(parts[1], offset))

            def _send(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture(scope="module")
def fhir() -> Iterator[_PagingFhir]:
    store = _PagingFhir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), store.handler())
    store.base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield store
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def ko() -> KnowledgeObject:
    return KnowledgeObject.from_path(SHELF / "ckd-epi-egfr" / "2.0.0")


@pytest.fixture(scope="module")
def base(ko: KnowledgeObject) -> Iterator[str]:
    app = FastAPI()
    app.router.routes.extend(CdsHooks(lambda request: [ko], CdsSettings(no_auth=True, fhir_max_pages=3)).routes)
    yield from _serve(app)


def _call(base: str, prefetch: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        **extra,
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    answer = httpx.post(f"{base}/cds-services/{EGFR}", json=body)
    assert answer.status_code == 200, answer.text
    (card,) = answer.json()["cards"]
    return card


def _three_creatinines() -> list[dict[str, Any]]:
    return [
        creatinine(0.8, when=_days_ago(60), oid="old"),
        creatinine(1.0, when=_days_ago(30), oid="middle"),
        creatinine(2.4, when=_days_ago(2), oid="newest"),
    ]


def test_fallback_search_follows_next_links_to_the_newest(base: str, fhir: _PagingFhir) -> None:
    fhir.resources[:] = _three_creatinines()
    fhir.paths.clear()
    card = _call(base, fhirServer=fhir.base)
    assert "| creatinine | 2.4 | mg/dL |" in card["detail"] and "Observation/newest" in card["detail"]
    assert "Warnings" not in card["detail"]
    searches = [p for p in fhir.paths if p.startswith("/fhir/Observation")]
    assert len(searches) == 3  # the first page and two next pages
    assert "_sort=-date" in searches[0] and "_count=" in searches[0]


def test_paged_prefetch_is_followed_on_the_fhir_server(base: str, fhir: _PagingFhir) -> None:
    fhir.resources[:] = _three_creatinines()
    first = fhir.page("Observation", 0)  # what the EHR prefetched: page one only, the oldest value
    card = _call(base, {"patient": patient(), "creatinine": first}, fhirServer=fhir.base)
    assert "| creatinine | 2.4 | mg/dL |" in card["detail"]
    assert "Warnings" not in card["detail"]


def test_paged_prefetch_without_a_fhir_server_warns(base: str, fhir: _PagingFhir) -> None:
    fhir.resources[:] = _three_creatinines()
    card = _call(base, {"patient": patient(), "creatinine": fhir.page("Observation", 0)})
    assert "| creatinine | 0.8 | mg/dL |" in card["detail"]  # all it had
    assert card["indicator"] in ("warning", "critical")
    assert "creatinine: the prefetched results are paged and there is no fhirServer" in card["detail"]
    assert "a more recent value may have been missed" in card["detail"]


def test_page_limit_reached_warns(base: str, fhir: _PagingFhir) -> None:
    fhir.resources[:] = [creatinine(1.0 + n / 10, when=_days_ago(50 - n), oid=f"c{n}") for n in range(5)]
    card = _call(base, fhirServer=fhir.base)  # 5 pages; the service reads at most 3
    assert card["indicator"] in ("warning", "critical")
    assert "creatinine: the results run to more than 3 pages" in card["detail"]


def test_a_next_link_off_the_fhir_server_is_not_followed(base: str, fhir: _PagingFhir) -> None:
    fhir.resources[:] = _three_creatinines()
    first = fhir.page("Observation", 0)
    first["link"][-1]["url"] = f"http://127.0.0.1:{_free_port()}/elsewhere/Observation?_offset=1"
    card = _call(base, {"patient": patient(), "creatinine": first}, fhirServer=fhir.base)
    assert "creatinine: the next page of results is not on the fhirServer" in card["detail"]
    assert card["indicator"] in ("warning", "critical")


@pytest.mark.parametrize("order", [[2, 0, 1], [0, 1, 2], [1, 2, 0]], ids=["newest-first", "newest-last", "middle"])
def test_newest_by_effective_time_not_bundle_order(base: str, order: list[int]) -> None:
    resources = _three_creatinines()
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": resources[n]} for n in order]}
    card = _call(base, {"patient": patient(), "creatinine": bundle})
    assert "| creatinine | 2.4 | mg/dL |" in card["detail"] and "Observation/newest" in card["detail"]


# -- units from FHIR -----------------------------------------------------------------------------


def _with_molar_code(ko: KnowledgeObject) -> Any:
    """egfr-cr with LOINC 14682-9 (creatinine, moles/volume) bound, whether or not the metadata has it yet."""
    spec = ko.function("egfr-cr")
    inputs = []
    for f in spec.inputs:
        if f.name == "creatinine" and f.fhir is not None and all(c.code != "14682-9" for c in f.fhir.codes):
            codes = [*f.fhir.codes, Code(system="http://loinc.org", code="14682-9")]
            f = f.model_copy(update={"fhir": f.fhir.model_copy(update={"codes": codes})})
        inputs.append(f)
    return spec.model_copy(update={"inputs": inputs})


@pytest.mark.parametrize(
    "quantity",
    [
        pytest.param({"unit": "umol/L", "system": "http://unitsofmeasure.org", "code": "umol/L"}, id="ucum-u"),
        pytest.param({"unit": "µmol/L", "system": "http://unitsofmeasure.org", "code": "\u00b5mol/L"}, id="micro-sign"),
        pytest.param({"unit": "μmol/L", "system": "http://unitsofmeasure.org", "code": "\u03bcmol/L"}, id="greek-mu"),
        pytest.param({"unit": "\u00b5mol/L"}, id="unit-only-no-system"),
    ],
)
def test_molar_creatinine_converts_through_the_declared_units(ko: KnowledgeObject, quantity: dict[str, Any]) -> None:
    spec = _with_molar_code(ko)
    obs = quantity_obs("si1", "14682-9", 88.4, "umol/L", _days_ago(3))
    obs["valueQuantity"] = {"value": 88.4, **quantity}
    data = FhirData.from_resources([patient(), searchset(obs)])
    mapping = map_inputs(spec, data, datetime.now(UTC))
    assert mapping.complete, mapping.gaps
    assert mapping.inputs["creatinine"] == {"value": 88.4, "unit": "umol/L"}
    declared = next(f for f in spec.inputs if f.name == "creatinine").accepted_units
    factor = next(u.factor for u in declared if u.unit == "umol/L")
    molar = ko.call("egfr-cr", mapping.inputs).result["egfr"]
    mass = ko.call("egfr-cr", {**mapping.inputs, "creatinine": 88.4 * factor}).result["egfr"]
    assert molar == pytest.approx(mass, rel=1e-12)


def test_a_unit_in_another_system_is_not_read_as_ucum(ko: KnowledgeObject) -> None:
    obs = quantity_obs("x1", "2160-0", 1.0, "mg/dL", _days_ago(3))
    obs["valueQuantity"] = {"value": 1.0, "unit": "mg/dL", "system": "http://example.org/units", "code": "mg/dL"}
    data = FhirData.from_resources([patient(), searchset(obs)])
    mapping = map_inputs(ko.function("egfr-cr"), data, datetime.now(UTC))
    assert [g.input for g in mapping.gaps] == ["creatinine"]
    assert "has no UCUM unit code" in mapping.gaps[0].message
