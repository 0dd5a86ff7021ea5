"""PLCOm2012's bindings after the code audit: COPD as ICD-10-CM files it, and no guessed smoking status."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir_data import coded_obs, condition, patient, searchset

from kgrid_py.fhir import FhirData, map_inputs
from kgrid_py.ko import KnowledgeObject

PLCO = Path(__file__).resolve().parent.parent / "knowledge_objects" / "plcom2012" / "1.0.0"
KFRE = Path(__file__).resolve().parent.parent / "knowledge_objects" / "kfre" / "1.0.0"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
HOOK_TIME = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def plco() -> KnowledgeObject:
    return KnowledgeObject.from_path(PLCO)


@pytest.mark.parametrize("code", ["J43.9", "J43.2", "J41.0", "J42", "J44.1"])
def test_emphysema_and_chronic_bronchitis_count_as_copd(plco: KnowledgeObject, code: str) -> None:
    """The input reads "COPD, emphysema or chronic bronchitis"; ICD-10-CM files the last two outside J44."""
    data = FhirData.from_resources([patient(), searchset(condition("c1", code, system=ICD), kind="Condition")])
    assert map_inputs(plco.function("risk"), data, HOOK_TIME).inputs["copd"] is True


def test_smoker_with_unknown_status_is_a_gap_not_current(plco: KnowledgeObject) -> None:
    """77176002 ("Smoker, current status unknown") may be a former smoker: never read as current."""
    data = FhirData.from_resources([patient(), searchset(coded_obs("smk1", "72166-2", "77176002"))])
    mapping = map_inputs(plco.function("risk"), data, HOOK_TIME)
    assert "smoking_status" not in mapping.inputs
    assert "smoking_status" in {g.input for g in mapping.gaps}


def test_every_bound_code_names_its_source() -> None:
    """Each code in PLCOm2012's and KFRE's bindings cites where it was checked."""
    for folder in (PLCO, KFRE):
        ko = KnowledgeObject.from_path(folder)
        for function in ko.metadata.functions:
            for field in function.inputs:
                for code in field.fhir.codes if field.fhir and field.fhir.codes else []:
                    where = f"{ko.ref} {function.name}.{field.name}: {code.system}|{code.code}"
                    assert code.source, f"{where} has no source"


def test_race_specific_mdrd_egfr_codes_are_not_bound() -> None:
    """48642-3/48643-1 (MDRD among non-blacks/blacks) come in pairs the mapper cannot tell apart."""
    ko = KnowledgeObject.from_path(KFRE)
    codes = {c.code for f in ko.metadata.functions for i in f.inputs if i.fhir for c in (i.fhir.codes or [])}
    assert not codes & {"48642-3", "48643-1"}
