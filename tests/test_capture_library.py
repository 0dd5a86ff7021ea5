"""Library capture: kgrid_py.load(..., capture=...) records every call, refused ones included, on both databases."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from pg import capture_url, pg_url  # noqa: F401 - fixtures

import kgrid_py
from kgrid_py.learning.capture import Capture, CaptureError
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer, SubjectSecretError

REPO = Path(__file__).resolve().parent.parent
KFRE = {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}
SECRET = secrets.token_hex(32).encode()


def _load(url: str, **kwargs: object) -> kgrid_py.KnowledgeObject:
    return kgrid_py.load("kfre@1", shelf=REPO / "knowledge_objects", capture=url, site="north", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["group", "sync"])
def test_every_call_is_recorded_with_provenance(capture_url: str, policy: str) -> None:  # noqa: F811
    ko = _load(capture_url, subject_secret=SECRET, capture_policy=policy)
    ok = ko.call("four-variable", KFRE, subject="patient-123")
    with pytest.raises(kgrid_py.InputError):
        ko.call("four-variable", {**KFRE, "egfr": -5}, subject="patient-123")
    with pytest.raises(kgrid_py.NotFound):
        ko.call("no-such-function", KFRE)
    ko.recorder.close()  # type: ignore[union-attr]
    with CaptureStore.open(capture_url) as store:
        rows = store.calls_table().to_pylist()
    assert [r["status"] for r in rows] == ["ok", "refused", "refused"]
    first = rows[0]
    assert first["site"] == "north" and first["channel"] == "library" and first["caller"] == "library"
    assert (first["ko_id"], first["version"], first["function"]) == (ko.id, ko.version, "four-variable")
    assert first["content_digest"] == ko.content_digest == ok.provenance.content_digest
    assert first["model_digest"] == ok.provenance.model_digest
    assert json.loads(first["inputs_received"]) == KFRE
    used = json.loads(first["inputs_used"])
    assert used["egfr"] == 45.0 and used["age"] == 63.0
    assert used["sex"] == KFRE["sex"] and used["region"] == "north_american"  # labels, not the graph's 0/1
    assert json.loads(first["outputs"]) == ok.result
    assert json.loads(first["warnings"]) == ok.warnings
    key = SubjectKeyer(SECRET).key("patient-123")
    assert first["subject_key"] == rows[1]["subject_key"] == key
    assert "patient-123" not in json.dumps(rows)
    assert "egfr" in rows[1]["error"] and rows[1]["outputs"] is None
    assert "no-such-function" in rows[2]["error"] and rows[2]["model_digest"] == ""
    assert first["latency_us"] > 0


def test_units_are_recorded_as_received_and_as_used(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    ko = _load(url)
    ko.call("four-variable", {**KFRE, "egfr": {"value": 0.75, "unit": "mL/s/{1.73_m2}"}})
    ko.recorder.close()  # type: ignore[union-attr]
    row = CaptureStore.open(url).calls_table().to_pylist()[0]
    assert json.loads(row["inputs_received"])["egfr"] == {"value": 0.75, "unit": "mL/s/{1.73_m2}"}
    assert json.loads(row["inputs_used"])["egfr"] == pytest.approx(45.0)


def test_batches_record_one_row_each(capture_url: str) -> None:  # noqa: F811
    ko = _load(capture_url, subject_secret=SECRET)
    table = pa.table({"age": [63, 70, 50], "sex": ["female", "male", "male"], "egfr": [45, -1, 30], "uacr": [30, 5, 9]})
    result = ko.call_batch("four-variable", table, subjects=["a", "b", "c"])
    ko.recorder.close()  # type: ignore[union-attr]
    rows = CaptureStore.open(capture_url).calls_table().to_pylist()
    assert [r["channel"] for r in rows] == ["batch"] * 3
    assert [r["status"] for r in rows] == ["ok", "refused", "ok"]
    keyer = SubjectKeyer(SECRET)
    assert [r["subject_key"] for r in rows] == [keyer.key(s) for s in "abc"]
    assert json.loads(rows[2]["outputs"])["risk_5y"] == pytest.approx(float(result["risk_5y"][2]))
    assert json.loads(rows[2]["inputs_used"])["egfr"] == 30.0
    assert [json.loads(rows[i]["inputs_used"])["sex"] for i in (0, 2)] == ["female", "male"]  # labels, as call does
    assert rows[1]["error"] == result.errors[1] and rows[1]["outputs"] is None


def test_subjects_need_a_secret_and_secrets_stay_secret(tmp_path: Path) -> None:
    with pytest.raises(SubjectSecretError, match="at least 32"):
        SubjectKeyer(b"short")
    keyer = SubjectKeyer(SECRET)
    assert SECRET.decode() not in repr(keyer) and SECRET.decode() not in str(keyer)
    with pytest.raises(TypeError):
        __import__("pickle").dumps(keyer)
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    assert SubjectKeyer.from_file(secret_file).key("x") == keyer.key("x") != SubjectKeyer(b"y" * 32).key("x")
    ko = _load(f"sqlite:///{tmp_path / 'c.sqlite3'}", subject_secret=None)
    with pytest.raises(CaptureError, match="no subject secret"):
        ko.call("four-variable", KFRE, subject="patient-1")


def test_a_store_that_disappears_fails_the_next_call(tmp_path: Path) -> None:
    store = CaptureStore.open(tmp_path / "c.sqlite3")
    capture = Capture(store, site="north", flush_interval_s=0.01)
    ko = kgrid_py.load("kfre@1", shelf=REPO / "knowledge_objects")
    ko.recorder = capture
    ko.call("four-variable", KFRE)
    capture.flush()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE calls")
    ko.call("four-variable", KFRE)
    with pytest.raises(CaptureError, match="not committed"):
        capture.flush()
    with pytest.raises(CaptureError, match="failed to commit"):
        ko.call("four-variable", KFRE)


def test_exit_flushes_group_commits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    code = (
        "import kgrid_py\n"
        f"ko = kgrid_py.load('kfre@1', shelf={str(REPO / 'knowledge_objects')!r}, capture={url!r}, site='s')\n"
        f"for _ in range(500): ko.call('four-variable', {KFRE!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert CaptureStore.open(url).count_calls() == 500
