"""Outcome imports refuse bad rows by number, never lose or double count, and read FHIR Bundles."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner
from pg import capture_url, pg_url  # noqa: F401 - fixtures

from kgrid_py.cli import cli
from kgrid_py.learning.ids import new_id
from kgrid_py.learning.outcomes import OutcomeImportError, fhir_bundle_rows, import_rows, rows_from_table
from kgrid_py.learning.records import CallRecord
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer

SECRET = "k" * 40
KEYER = SubjectKeyer(SECRET)
CALL_DAY = dt.datetime(2021, 3, 1, 9, tzinfo=dt.UTC)


def _store(url):
    store = CaptureStore.open(url)
    records = [
        CallRecord(
            id=new_id(),
            ts_us=int(CALL_DAY.timestamp() * 1e6),
            site="north",
            channel="library",
            caller="library",
            ko_id="kfre",
            version="1.0.0",
            content_digest="0" * 64,
            model_digest="0" * 64,
            function="four-variable",
            subject_key=KEYER.key(pid),
            inputs_received="{}",
            inputs_used="{}",
            outputs='{"risk_2y": 0.1, "risk_5y": 0.2}',
            warnings="[]",
            status="ok",
            latency_us=1,
        )
        for pid in ("p1", "p2", "p3")
    ]
    store.write_calls(records)
    return store


def test_bad_rows_are_refused_by_number_and_good_rows_kept(capture_url, tmp_path):  # noqa: F811
    _store(capture_url).close()
    csv = tmp_path / "o.csv"
    csv.write_text(
        "pid,ev,evd,fu\n"
        "p1,1,2022-01-05,2022-01-05\n"  # good
        "p2,0,,2020-12-31\n"  # follow-up before the call
        "p3,1,,2022-02-01\n"  # event without its date
        "p4,0,,2023-01-01\n"  # no call for this subject: stored, reported
        "p1,yes,2022-01-05,2022-01-05\n"  # not 0/1
        "p3,0,,2022-13-01\n"  # not a date
    )
    args = [
        "outcomes",
        "import",
        str(csv),
        "--store",
        capture_url,
        "--site",
        "north",
        "--outcome",
        "kidney_failure",
        "--subject-col",
        "pid",
        "--event-col",
        "ev",
        "--event-date-col",
        "evd",
        "--followup-col",
        "fu",
    ]
    result = CliRunner().invoke(cli, args, env={"KGRID_SUBJECT_SECRET": SECRET})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["rows"], report["inserted"], report["refused"], report["unknown_subjects"]) == (6, 2, 4, 1)
    assert {p["row"] for p in report["problems"]} == {2, 3, 5, 6}
    errors = {p["row"]: p["error"] for p in report["problems"]}
    assert "before the subject's first call (2021-03-01)" in errors[2]
    assert errors[3] == "an event needs its event date"
    assert "must be 0 or 1" in errors[5]
    assert "is not an ISO date" in errors[6]
    again = json.loads(CliRunner().invoke(cli, args, env={"KGRID_SUBJECT_SECRET": SECRET}).output)
    assert (again["inserted"], again["duplicates"]) == (0, 2)
    # the patient id never reaches the store
    with CaptureStore.open(capture_url) as store, store.engine.connect() as conn:
        stored = [tuple(r) for r in conn.exec_driver_sql("SELECT subject_key, source FROM outcomes")]
    assert len(stored) == 2 and all(len(key) == 64 and "p1" not in key for key, _ in stored)


def test_missing_column_and_missing_secret_are_clear_errors(tmp_path):
    csv = tmp_path / "o.csv"
    csv.write_text("pid,ev\np1,1\n")
    url = f"sqlite:///{tmp_path / 'c.db'}"
    base = ["outcomes", "import", str(csv), "--store", url, "--site", "s", "--outcome", "x", "--subject-col", "pid"]
    result = CliRunner().invoke(cli, [*base, "--event-col", "event"], env={"KGRID_SUBJECT_SECRET": SECRET})
    assert result.exit_code == 1
    assert "the file has no event column 'event' (it has pid, ev)" in result.output
    result = CliRunner().invoke(cli, [*base, "--event-col", "ev"], env={"KGRID_SUBJECT_SECRET": ""})
    assert result.exit_code == 2 and "no subject secret" in result.output


def test_unreachable_store_is_one_line_and_exit_1(tmp_path):
    csv = tmp_path / "o.csv"
    csv.write_text("pid,ev,fu\np1,0,2022-01-01\n")
    args = [
        "outcomes",
        "import",
        str(csv),
        "--store",
        "postgresql://nobody:pw@127.0.0.1:1/none",
        "--site",
        "s",
        "--outcome",
        "x",
        "--subject-col",
        "pid",
        "--event-col",
        "ev",
        "--followup-col",
        "fu",
    ]
    result = CliRunner().invoke(cli, args, env={"KGRID_SUBJECT_SECRET": SECRET})
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot open capture store") and "pw" not in result.output


CODES = [("http://snomed.info/sct", "46177005")]
DEATH = [("http://snomed.info/sct", "419620001")]


def _entry(kind, pid, code, when="2022-06-01"):
    return {
        "resource": {
            "resourceType": kind,
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": code[0], "code": code[1]}]},
            "onsetDateTime": when,
        }
    }


def test_fhir_bundle_rows_and_malformed_bundles(capture_url):  # noqa: F811
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            _entry("Condition", "p1", CODES[0]),
            _entry("Observation", "p2", DEATH[0], "2022-07-01T10:00:00Z"),
            _entry("Condition", "p3", ("http://snomed.info/sct", "1")),  # not a declared code
            {"resource": {"resourceType": "Patient"}},
            {"resource": {"resourceType": "Procedure", "code": {}}},
        ],
    }
    rows = fhir_bundle_rows(bundle, codes=CODES, competing_codes=DEATH)
    assert rows[0].event == 1 and rows[0].event_date == "2022-06-01"
    assert rows[1].competing_event == 1 and rows[1].competing_date == "2022-07-01"
    assert rows[2][1].startswith("Condition codes (http://snomed.info/sct|1) match none declared")
    assert "is not one of Condition, Procedure, Observation" in rows[3][1]
    assert rows[4][1] == "Procedure.subject.reference must be 'Patient/<id>'"
    with _store(capture_url) as store:
        report = import_rows(store, rows, site="north", outcome="kidney_failure", keyer=KEYER, source="fhir")
    assert (report.inserted, report.refused) == (2, 3)
    for bad in ({"resourceType": "Patient"}, [], {"resourceType": "Bundle", "entry": {}}):
        with pytest.raises(OutcomeImportError):
            fhir_bundle_rows(bad, codes=CODES)


def test_rows_from_table_names_the_missing_column():
    import pyarrow as pa

    with pytest.raises(OutcomeImportError, match="no patient_id column 'id'"):
        rows_from_table(pa.table({"x": [1]}), {"patient_id": "id"})
