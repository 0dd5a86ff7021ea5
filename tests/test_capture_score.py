"""``kgrid score --subject COL --capture URL --site S``: one batch record per row, the patient keyed."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pg import capture_url, pg_url  # noqa: F401 - fixtures

from kgrid_py.cli import cli
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
CSV = """patient_id,age,sex,egfr,acr
007,63,female,45,3.4
p-2,55,male,38,17
p-3,70,female,-1,5
"""


def _score(tmp_path: Path, *extra: str) -> tuple[int, str, Path]:
    (tmp_path / "in.csv").write_text(CSV)
    out = tmp_path / "out.parquet"
    args = ["score", "kfre@1", "four-variable", "--input", str(tmp_path / "in.csv"), "--output", str(out)]
    args += ["--map", "acr=uacr", "--unit", "acr=mg/mmol", "--shelf", str(SHELF), "--no-progress", *extra]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output, out


def test_score_records_each_row_with_its_keyed_subject(tmp_path: Path, capture_url: str) -> None:  # noqa: F811
    secret = tmp_path / "site.secret"
    secret.write_text(secrets.token_hex(32))
    code, output, out = _score(
        tmp_path,
        "--subject",
        "patient_id",
        "--capture",
        capture_url,
        "--site",
        "east",
        "--subject-secret-file",
        str(secret),
    )
    assert code == 0, output
    scored = pq.read_table(out).to_pylist()
    assert "patient_id" not in scored[0]  # the id is never written out unless kept
    rows = CaptureStore.open(capture_url).calls_table().to_pylist()
    keyer = SubjectKeyer(secret.read_text())
    assert [(r["channel"], r["site"], r["caller"], r["status"]) for r in rows] == [
        ("batch", "east", "library", "ok"),
        ("batch", "east", "library", "ok"),
        ("batch", "east", "library", "refused"),
    ]
    assert [r["subject_key"] for r in rows] == [keyer.key(p) for p in ("007", "p-2", "p-3")]
    for record, row in zip(rows[:2], scored[:2], strict=True):
        assert json.loads(record["outputs"]) == {"risk_2y": row["risk_2y"], "risk_5y": row["risk_5y"]}
    assert json.loads(rows[0]["inputs_used"])["uacr"] == 3.4 * 8.84  # mg/mmol as received, mg/g as used
    assert rows[2]["error"] == scored[2]["error"]
    assert not any(p in json.dumps(rows) for p in ('"007"', "p-2", "p-3"))


def test_score_capture_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KGRID_SUBJECT_SECRET", raising=False)
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    assert _score(tmp_path, "--subject", "patient_id")[0] == 2
    assert _score(tmp_path, "--capture", url)[0] == 2  # no --site
    code, output, _ = _score(tmp_path, "--subject", "nope", "--capture", url, "--site", "east")
    assert code == 2 and "--subject column 'nope'" in output
    code, output, out = _score(tmp_path, "--subject", "patient_id", "--capture", url, "--site", "east")
    assert code == 1 and "subject secret" in output and not out.exists()
