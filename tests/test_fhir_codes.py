"""The FHIR code audit of the bundled KOs (issue 11, "Every code a lab really sends").

Every LOINC code bound to a quantity says where it was checked and which unit its property
implies (used when an Observation has no unit); a molar creatinine (14682-9, umol/L) gives the
same eGFR as a mass one (2160-0, mg/dL), through the mapper and through a real CDS Hooks call;
a UACR in mg/mmol converts correctly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fhir_data import creatinine, patient, quantity_obs, searchset, uacr
from test_cds_hooks import _serve

from activator.routes.cds_hooks import CdsHooks, CdsSettings
from kgrid_py.fhir import FhirData, map_inputs
from kgrid_py.ko import KnowledgeObject
from kgrid_py.units import conversion_factor

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
BOUND = ("ckd-epi-egfr/1.0.0", "ckd-epi-egfr/2.0.0", "kfre/1.0.0", "plcom2012/1.0.0")
NOW = datetime(2026, 10, 3, tzinfo=UTC)


def _quantity_codes() -> list[Any]:
    out = []
    for ko_dir in BOUND:
        ko = KnowledgeObject.from_path(SHELF / ko_dir)
        for fn in ko.metadata.functions:
            for f in fn.inputs:
                if f.fhir is not None and f.fhir.kind == "observation" and f.unit:
                    out.extend(pytest.param(f, c, id=f"{ko_dir}:{f.name}:{c.code}") for c in f.fhir.codes)
    return out


@pytest.mark.parametrize(("field", "code"), _quantity_codes())
def test_every_quantity_code_has_a_source_and_a_unit_the_input_accepts(field: Any, code: Any) -> None:
    assert code.source and code.source.startswith("https://"), "each code cites where it was checked"
    if code.unit is None:  # only LOINC's [Ratio] property fixes no unit: the Observation must carry one
        assert code.display and "[Ratio]" in code.display
        return
    declared = [(u.unit, u.factor) for u in field.accepted_units]
    assert conversion_factor(code.unit, field.unit, declared) > 0


def _ko(ref: str) -> KnowledgeObject:
    return KnowledgeObject.from_path(SHELF / ref)


def _map(ko: KnowledgeObject, function: str, *resources: dict) -> Any:
    data = FhirData.from_resources([patient(), searchset(*resources, kind="Observation")])
    return map_inputs(ko.function(function), data, now=NOW)


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_molar_creatinine_gives_the_same_egfr_as_mass_creatinine(version: str) -> None:
    ko = _ko(f"ckd-epi-egfr/{version}")
    mass = _map(ko, "egfr-cr", creatinine(1.3, "mg/dL", code="2160-0"))
    molar = _map(ko, "egfr-cr", creatinine(1.3 * 88.4, "umol/L", code="14682-9"))
    assert mass.complete and molar.complete, (mass.gaps, molar.gaps)
    assert molar.sources["creatinine"].code == "http://loinc.org|14682-9"
    a = ko.call("egfr-cr", mass.inputs).result["egfr"]
    b = ko.call("egfr-cr", molar.inputs).result["egfr"]
    assert b == pytest.approx(a, rel=1e-12)


def test_a_molar_code_without_a_unit_takes_the_codes_unit() -> None:
    ko = _ko("ckd-epi-egfr/2.0.0")
    bare = quantity_obs("cr9", "14682-9", 1.3 * 88.4, "mg/dL", system=None)
    del bare["valueQuantity"]["unit"], bare["valueQuantity"]["code"]
    mapping = _map(ko, "egfr-cr", bare)
    assert mapping.complete, mapping.gaps
    assert mapping.inputs["creatinine"] == {"value": pytest.approx(114.92), "unit": "umol/L"}
    mass = _map(ko, "egfr-cr", creatinine(1.3, "mg/dL"))
    assert ko.call("egfr-cr", mapping.inputs).result["egfr"] == pytest.approx(
        ko.call("egfr-cr", mass.inputs).result["egfr"], rel=1e-12
    )


def test_a_ratio_code_without_a_unit_is_never_given_one() -> None:
    bare = quantity_obs("u9", "32294-1", 3.4, "mg/mmol", system=None)
    del bare["valueQuantity"]["unit"], bare["valueQuantity"]["code"]
    mapping = _map(_ko("kfre/1.0.0"), "four-variable", bare, quantity_obs("e1", "98979-8", 45, "mL/min/{1.73_m2}"))
    assert [g.input for g in mapping.gaps] == ["uacr"]


def test_uacr_in_mg_per_mmol_coded_32294_1_converts_like_mg_per_g() -> None:
    ko = _ko("kfre/1.0.0")
    field = next(f for f in ko.function("four-variable").inputs if f.name == "uacr")
    factor = conversion_factor("mg/mmol", field.unit, [(u.unit, u.factor) for u in field.accepted_units])
    egfr = quantity_obs("e1", "98979-8", 45, "mL/min/{1.73_m2}")
    molar = _map(ko, "four-variable", egfr, uacr(3.4, "mg/mmol", code="32294-1"))
    mass = _map(ko, "four-variable", egfr, uacr(3.4 * factor, "mg/g", code="9318-7"))
    assert molar.complete and mass.complete, (molar.gaps, mass.gaps)
    assert molar.sources["uacr"].code == "http://loinc.org|32294-1"
    a = ko.call("four-variable", mass.inputs).result
    b = ko.call("four-variable", molar.inputs).result
    assert b == pytest.approx(a, rel=1e-12)
    assert a["risk_5y"] != pytest.approx(ko.call("four-variable", {**mass.inputs, "uacr": 3.4}).result["risk_5y"])


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    kos = [_ko("ckd-epi-egfr/2.0.0")]
    app = FastAPI()
    app.router.routes.extend(CdsHooks(lambda request: kos, CdsSettings(no_auth=True)).routes)
    yield from _serve(app)


def _card(base: str, observation: dict) -> dict[str, Any]:
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        "prefetch": {"patient": patient(), "creatinine": searchset(observation, kind="Observation")},
    }
    answer = httpx.post(f"{base}/cds-services/ckd-epi-egfr-2.0.0-egfr-cr", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    (card,) = answer.json()["cards"]
    return card


def test_a_european_ehr_gets_the_same_card_over_cds_hooks(base: str) -> None:
    today = time.strftime("%Y-%m-%d")
    services = httpx.get(f"{base}/cds-services", timeout=30).json()["services"]
    assert "ckd-epi-egfr-2.0.0-egfr-cr" in [s["id"] for s in services]
    mass = _card(base, creatinine(1.3, "mg/dL", when=today, code="2160-0"))
    molar = _card(base, creatinine(1.3 * 88.4, "umol/L", when=today, code="14682-9"))
    assert "cannot compute" not in molar["summary"], molar["detail"]
    assert molar["summary"] == mass["summary"]
