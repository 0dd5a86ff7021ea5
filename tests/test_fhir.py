"""FHIR R4 -> KO inputs: bindings, units, look-back, sex, conditions and malformed data."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from fhir_data import (
    NOW,
    PLCO_DIRECT,
    coded_obs,
    condition,
    creatinine,
    egfr,
    family_history,
    loinc_answer_obs,
    patient,
    plco_resources,
    quantity_obs,
    searchset,
    sex_for_clinical_use,
    uacr,
    us_core_patient,
)

from kgrid_py.fhir import PAGE_SIZE, FhirData, FhirDataError, map_inputs, prefetch_templates
from kgrid_py.ko import KnowledgeObject

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
HOOK_TIME = datetime.fromisoformat(NOW)


@pytest.fixture(scope="module")
def kfre() -> KnowledgeObject:
    return KnowledgeObject.from_path(SHELF / "kfre" / "1.0.0")


@pytest.fixture(scope="module")
def egfr_ko() -> KnowledgeObject:
    return KnowledgeObject.from_path(SHELF / "ckd-epi-egfr" / "2.0.0")


@pytest.fixture(scope="module")
def plco() -> KnowledgeObject:
    return KnowledgeObject.from_path(SHELF / "plcom2012" / "1.0.0")


def _map(ko: KnowledgeObject, function: str, *resources: dict):
    return map_inputs(ko.function(function), FhirData.from_resources(resources), HOOK_TIME)


def test_kfre_inputs_with_provenance(kfre: KnowledgeObject) -> None:
    m = _map(kfre, "four-variable", patient(), searchset(egfr(30), kind="Observation"), searchset(uacr(300)))
    assert m.complete
    assert m.inputs == {
        "age": {"value": 66, "unit": "a"},
        "sex": "male",
        "egfr": {"value": 30.0, "unit": "mL/min/{1.73_m2}"},
        "uacr": {"value": 300.0, "unit": "mg/g"},
    }
    src = m.sources["egfr"]
    assert (src.resource, src.effective[:10], src.code) == (
        "Observation/egfr1",
        "2026-10-02",
        "http://loinc.org|98979-8",
    )
    assert kfre.call("four-variable", m.inputs).result["risk_5y"] > 0.05


def test_age_is_taken_at_the_hook_time(kfre: KnowledgeObject) -> None:
    before = map_inputs(
        kfre.function("four-variable"), FhirData.from_resources([patient(birth="1960-11-02")]), HOOK_TIME
    )
    on_day = map_inputs(
        kfre.function("four-variable"), FhirData.from_resources([patient(birth="1960-11-01")]), HOOK_TIME
    )
    assert before.inputs["age"]["value"] == 65
    assert on_day.inputs["age"]["value"] == 66


def test_uacr_mg_per_mmol_gives_the_same_risk_as_mg_per_g(kfre: KnowledgeObject) -> None:
    mg_g = _map(kfre, "four-variable", patient(), egfr(30), uacr(88.4))
    mg_mmol = _map(kfre, "four-variable", patient(), egfr(30), uacr(10, "mg/mmol", code="14959-1"))
    assert mg_mmol.inputs["uacr"] == {"value": 10.0, "unit": "mg/mmol"}
    a = kfre.call("four-variable", mg_g.inputs).result["risk_5y"]
    b = kfre.call("four-variable", mg_mmol.inputs).result["risk_5y"]
    assert a == pytest.approx(b, rel=1e-6)


def test_creatinine_umol_per_l_gives_the_same_egfr_as_mg_per_dl(egfr_ko: KnowledgeObject) -> None:
    mg = _map(egfr_ko, "egfr-cr", patient(), creatinine(1.5))
    umol = _map(egfr_ko, "egfr-cr", patient(), creatinine(1.5 * 88.4, "umol/L", code="38483-4"))
    assert umol.inputs["creatinine"] == {"value": pytest.approx(132.6), "unit": "umol/L"}
    a = egfr_ko.call("egfr-cr", mg.inputs).result["egfr"]
    b = egfr_ko.call("egfr-cr", umol.inputs).result["egfr"]
    assert a == pytest.approx(b, rel=1e-6)


def test_most_recent_final_observation_wins(egfr_ko: KnowledgeObject) -> None:
    m = _map(
        egfr_ko,
        "egfr-cr",
        patient(),
        creatinine(1.0, when="2026-06-01", oid="old"),
        creatinine(2.0, when="2026-10-20", oid="recent"),
        creatinine(9.0, when="2026-10-30", oid="prelim") | {"status": "preliminary"},
        creatinine(8.0, when="2026-10-31", oid="other-patient") | {"subject": {"reference": "Patient/p2"}},
    )
    assert m.sources["creatinine"].resource == "Observation/recent"
    assert m.inputs["creatinine"]["value"] == 2.0


def test_only_old_observations_are_stale(egfr_ko: KnowledgeObject) -> None:
    m = _map(egfr_ko, "egfr-cr", patient(), creatinine(1.0, when="2025-01-15", oid="old"))
    assert [(g.input, g.reason) for g in m.gaps] == [("creatinine", "stale")]
    assert str(m.gaps[0]) == "creatinine: the most recent (Observation/old, 2025-01-15) is older than 180 days"


def test_missing_observations_say_which_codes(kfre: KnowledgeObject) -> None:
    m = _map(kfre, "four-variable", patient(), searchset(egfr(30), kind="Observation"))
    assert [(g.input, g.reason) for g in m.gaps] == [("uacr", "missing")]
    assert m.gaps[0].message == "no final Observation with code 9318-7, 14959-1, 32294-1"


def test_no_observations_at_all(kfre: KnowledgeObject) -> None:
    m = _map(kfre, "four-variable", patient())
    assert {g.input for g in m.gaps} == {"egfr", "uacr"}
    assert "no Observations were provided" in m.gaps[0].message


def test_conflicting_results_at_the_same_time(egfr_ko: KnowledgeObject) -> None:
    m = _map(
        egfr_ko,
        "egfr-cr",
        patient(),
        creatinine(1.2, when="2026-10-02T08:00:00Z", oid="a"),
        creatinine(2.4, when="2026-10-02T08:00:00Z", oid="b", code="38483-4"),
    )
    assert [(g.input, g.reason) for g in m.gaps] == [("creatinine", "conflicting")]
    assert "Observation/a (1.2 mg/dL)" in m.gaps[0].message


def test_the_same_result_in_two_units_is_not_a_conflict(egfr_ko: KnowledgeObject) -> None:
    m = _map(
        egfr_ko,
        "egfr-cr",
        patient(),
        creatinine(1.5, when="2026-10-02T08:00:00Z", oid="a"),
        creatinine(132.6, "umol/L", when="2026-10-02T08:00:00Z", oid="b", code="38483-4"),
    )
    assert m.complete


@pytest.mark.parametrize(
    ("obs", "message"),
    [
        pytest.param(
            creatinine(1.2, "%"),
            "Observation/cr1 unit '%' cannot be converted to mg/dL (accepted: mg/dL, umol/L)",
            id="unknown-unit",
        ),
        pytest.param(
            quantity_obs("cr1", "2160-0", 1.2, "mg/dL", system="http://example.org/units"),
            "Observation/cr1 value 1.2 has no UCUM unit code (unit 'mg/dL', system 'http://example.org/units'); "
            "expected mg/dL",
            id="not-ucum",
        ),
        pytest.param(
            {**{k: v for k, v in creatinine(1.2).items() if k != "valueQuantity"}, "valueString": "1.2 mg/dL"},
            "Observation/cr1 has no numeric valueQuantity (it has valueString)",
            id="non-numeric",
        ),
    ],
)
def test_unusable_observations(egfr_ko: KnowledgeObject, obs: dict, message: str) -> None:
    m = _map(egfr_ko, "egfr-cr", patient(), obs)
    assert [(g.reason, g.message) for g in m.gaps] == [("unusable", message)]


@pytest.mark.parametrize("gender", ["other", "unknown"])
def test_other_or_unknown_gender_cannot_compute(egfr_ko: KnowledgeObject, gender: str) -> None:
    m = _map(egfr_ko, "egfr-cr", patient(gender=gender), creatinine(1.0))
    assert [(g.input, g.reason) for g in m.gaps] == [("sex", "cannot-compute")]
    assert f"Patient.gender is {gender!r}" in m.gaps[0].message
    assert "sex" not in m.inputs


def test_sex_for_clinical_use_overrides_gender(egfr_ko: KnowledgeObject) -> None:
    p = patient(gender="other", extension=[sex_for_clinical_use("female-typical")])
    m = _map(egfr_ko, "egfr-cr", p, creatinine(1.0))
    assert m.inputs["sex"] == "female"
    assert m.sources["sex"].code == "sex-for-clinical-use"


def test_sex_for_clinical_use_specified_cannot_compute(egfr_ko: KnowledgeObject) -> None:
    p = patient(gender="male", extension=[sex_for_clinical_use("specified")])
    m = _map(egfr_ko, "egfr-cr", p, creatinine(1.0))
    assert [(g.input, g.reason) for g in m.gaps] == [("sex", "cannot-compute")]


def test_partial_birth_date_is_unusable(egfr_ko: KnowledgeObject) -> None:
    m = _map(egfr_ko, "egfr-cr", patient(birth="1960"), creatinine(1.0))
    assert [(g.input, g.reason) for g in m.gaps] == [("age", "unusable")]


def test_conditions_and_coded_answers(plco: KnowledgeObject) -> None:
    spec = plco.function("risk")
    data = FhirData.from_resources(
        [
            patient(),
            searchset(quantity_obs("bmi1", "39156-5", 27.0, "kg/m2"), coded_obs("smk1", "72166-2", "8517006")),
            searchset(condition("c1", "J44.9", system="http://hl7.org/fhir/sid/icd-10-cm"), kind="Condition"),
        ]
    )
    m = map_inputs(spec, data, HOOK_TIME)
    assert m.inputs["copd"] is True and m.sources["copd"].resource == "Condition/c1"
    assert m.inputs["smoking_status"] == "former"
    assert m.inputs["bmi"] == {"value": 27.0, "unit": "kg/m2"}
    # inputs the record does not hold (race, education, ...) are named, not guessed
    gaps = {g.input: g for g in m.gaps}
    assert set(gaps) >= {"race", "education", "cigarettes_per_day", "family_lung_cancer_history"}
    assert gaps["cigarettes_per_day"].message == "no final Observation with code 8663-7"
    assert gaps["race"].message == "Patient/p1 has no US Core race or ethnicity OMB category"


def test_resolved_or_absent_condition_is_false(plco: KnowledgeObject) -> None:
    spec = plco.function("risk")
    resolved = FhirData.from_resources(
        [patient(), searchset(condition("c1", "13645005", "resolved"), kind="Condition")]
    )
    assert map_inputs(spec, resolved, HOOK_TIME).inputs["copd"] is False
    unsearched = map_inputs(spec, FhirData.from_resources([patient()]), HOOK_TIME)
    assert "copd" in {g.input for g in unsearched.gaps}


def test_never_smoker_answer_is_unusable(plco: KnowledgeObject) -> None:
    m = _map(plco, "risk", patient(), coded_obs("smk1", "72166-2", "266919005"))
    gap = next(g for g in m.gaps if g.input == "smoking_status")
    assert gap.message == "Observation/smk1 answer http://snomed.info/sct|266919005 maps to none of current, former"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        pytest.param(
            {"resourceType": "Observation", "id": "x", "status": "final"},
            "invalid FHIR R4 Observation/x: code: Field required",
            id="missing-code",
        ),
        pytest.param({"resourceType": "Bundle", "type": "document"}, "a Bundle of type 'document'", id="bundle-type"),
        pytest.param({"id": "x"}, "a FHIR resource needs a 'resourceType'", id="no-type"),
        pytest.param([1, 2], "expected a FHIR resource (a JSON object), got list", id="not-object"),
        pytest.param(
            {"resourceType": "Patient", "birthDate": "yesterday"},
            "invalid FHIR R4 Patient: birthDate",
            id="bad-date",
        ),
    ],
)
def test_malformed_fhir_is_refused(item: object, message: str) -> None:
    with pytest.raises(FhirDataError, match=None) as info:
        FhirData.from_resources([item])
    assert message in str(info.value)


def test_prefetch_templates_come_from_the_bindings(kfre: KnowledgeObject) -> None:
    templates = prefetch_templates(kfre.function("four-variable"))
    assert templates["patient"] == "Patient/{{context.patientId}}"
    uacr = next(f for f in kfre.function("four-variable").inputs if f.name == "uacr")
    codes = ",".join(f"{c.system}|{c.code}" for c in uacr.fhir.codes)
    # Newest first and a bounded page: an EHR that pages still gives the latest value on page one.
    assert templates["uacr"] == (
        f"Observation?patient={{{{context.patientId}}}}&code={codes}&_sort=-date&_count={PAGE_SIZE}"
    )
    assert set(templates) == {"patient", "egfr", "uacr"}


# -- PLCOm2012 from a full record ----------------------------------------------------------------


def _plco_data(lazy: bool, **override: object) -> FhirData:
    data = FhirData(lazy=lazy)
    for value in {**plco_resources(), **override}.values():
        data.add(value)
    return data


@pytest.mark.parametrize("lazy", [False, True], ids=["validate-all", "lazy"])
def test_full_plco_record_computes_the_same_risk_as_direct_inputs(plco: KnowledgeObject, lazy: bool) -> None:
    m = map_inputs(plco.function("risk"), _plco_data(lazy), HOOK_TIME)
    assert m.complete, m.gaps
    assert m.inputs["cigarettes_per_day"] == {"value": 1.5, "unit": "{pack}/d"}  # 1.5 packs = 30 cigarettes
    assert m.inputs["education"] == 4 and m.sources["education"].resource == "Observation/edu1"
    assert m.sources["family_lung_cancer_history"].resource == "FamilyMemberHistory/f1"
    assert m.sources["personal_cancer_history"].resource == "Condition/c2"  # resolved cancer is still history
    direct = plco.call("risk", PLCO_DIRECT).result
    assert plco.call("risk", m.inputs).result == pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize(
    ("patient_resource", "value", "reason"),
    [
        pytest.param(us_core_patient(races=("2054-5",)), "black", None, id="black"),
        pytest.param(us_core_patient(races=("2106-3",), ethnicity="2135-2"), "hispanic", None, id="hispanic-wins"),
        pytest.param(us_core_patient(races=("2106-3", "2028-9")), None, "cannot-compute", id="two-races"),
        pytest.param(us_core_patient(races=("2131-1",)), None, "unusable", id="other-race"),
        pytest.param(us_core_patient(races=(), ethnicity=None), None, "missing", id="none"),
    ],
)
def test_us_core_race(plco: KnowledgeObject, patient_resource: dict, value: str | None, reason: str | None) -> None:
    m = map_inputs(plco.function("risk"), _plco_data(True, patient=patient_resource), HOOK_TIME)
    if value is not None:
        assert m.inputs["race"] == value
    else:
        (gap,) = [g for g in m.gaps if g.input == "race"]
        assert gap.reason == reason


@pytest.mark.parametrize(("relation", "expected"), [("MTH", True), ("NBRO", True), ("GRMTH", False), ("AUNT", False)])
def test_family_history_counts_first_degree_relatives_only(
    plco: KnowledgeObject, relation: str, expected: bool
) -> None:
    bundle = searchset(family_history("f1", relation), kind="FamilyMemberHistory")
    m = map_inputs(plco.function("risk"), _plco_data(True, family_lung_cancer_history=bundle), HOOK_TIME)
    assert m.inputs["family_lung_cancer_history"] is expected


def test_coarse_education_answer_is_named_not_guessed(plco: KnowledgeObject) -> None:
    # 82589-3 "More than high school" spans PLCO levels 3-6
    bundle = searchset(loinc_answer_obs("edu2", "82589-3", "LA30193-9"))
    m = map_inputs(plco.function("risk"), _plco_data(True, education=bundle), HOOK_TIME)
    (gap,) = m.gaps
    assert gap.input == "education" and gap.reason == "unusable"
    assert "Observation/edu2 answer http://loinc.org|LA30193-9 has no mapping" in gap.message
    ok = map_inputs(
        plco.function("risk"),
        _plco_data(True, education=searchset(loinc_answer_obs("edu3", "82589-3", "LA30192-1"))),
        HOOK_TIME,
    )
    assert ok.inputs["education"] == 2


def test_lazy_mode_validates_only_what_it_uses(plco: KnowledgeObject) -> None:
    junk = {"resourceType": "Observation", "id": "junk", "status": "final", "code": {"coding": [{"code": 7}]}}
    bad_bmi = {**quantity_obs("bmi9", "39156-5", 30, "kg/m2", "2026-10-20"), "valueQuantity": {"value": "x"}}
    extra = searchset(junk, quantity_obs("bmi1", "39156-5", 27.5, "kg/m2"))
    # a malformed resource no binding selects is not looked at
    assert map_inputs(plco.function("risk"), _plco_data(True, bmi=extra), HOOK_TIME).complete
    # the one that would be used is validated, and refused
    with pytest.raises(FhirDataError, match=r"invalid FHIR R4 Observation/bmi9: valueQuantity\.value"):
        map_inputs(plco.function("risk"), _plco_data(True, bmi=searchset(bad_bmi)), HOOK_TIME)


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        ({"resourceType": "Bundle", "type": "document"}, "a Bundle of type 'document'"),
        ({"resourceType": "Bundle", "type": "searchset", "entry": {"x": 1}}, "entry: must be an array"),
        ({"resourceType": "Bundle", "type": "searchset", "entry": [7]}, "entry.0: must be an object"),
        ({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"id": "x"}}]}, "'resourceType'"),
        ({"resourceType": "Patient", "gender": 7}, "invalid FHIR R4 Patient: gender"),
    ],
)
def test_lazy_mode_still_refuses_malformed_bundles(bundle: dict, message: str) -> None:
    with pytest.raises(FhirDataError) as info:
        FhirData(lazy=True).add(bundle)
    assert message in str(info.value)
