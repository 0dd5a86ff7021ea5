"""The ``kgrid`` command as a user runs it: a real subprocess, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KGRID = [sys.executable, "-m", "kgrid_py"]
PATIENT = {"weight": 70, "height": 1.75, "sex": "female", "age": 95}


def kgrid(*args: str, shelf: Path | None = None, stdin: str | None = None, cwd: Path | None = None):
    env = {k: v for k, v in os.environ.items() if k != "KGRID_SHELF"}
    if shelf is not None:
        env["KGRID_SHELF"] = str(shelf)
    return subprocess.run([*KGRID, *args], capture_output=True, text=True, input=stdin, env=env, cwd=cwd, timeout=60)


def test_run_prints_result_and_info(demo_shelf: Path) -> None:
    proc = kgrid("run", "demo-bmi@1", "bmi", "--input", json.dumps(PATIENT), shelf=demo_shelf)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["result"]["bmi"] == pytest.approx(70 / 1.75**2)
    assert out["info"]["id"] == "demo-bmi" and out["info"]["version"] == "1.0.0"
    assert out["info"]["warnings"][0].startswith("age:")


def test_run_from_file_and_stdin(demo_shelf: Path, tmp_path: Path) -> None:
    file = tmp_path / "in.json"
    file.write_text(json.dumps(PATIENT))
    from_file = kgrid("run", "demo-bmi", "bmi", "--input", f"@{file}", "--shelf", str(demo_shelf))
    from_stdin = kgrid("run", "demo-bmi", "bmi", "--input", "-", "--shelf", str(demo_shelf), stdin=json.dumps(PATIENT))
    assert from_file.returncode == from_stdin.returncode == 0
    assert json.loads(from_file.stdout)["result"] == json.loads(from_stdin.stdout)["result"]


def test_shelf_defaults_to_knowledge_objects_in_cwd(demo_shelf: Path) -> None:
    (demo_shelf.parent / "knowledge_objects").symlink_to(demo_shelf)
    proc = kgrid("list", cwd=demo_shelf.parent)
    assert proc.returncode == 0 and "demo-bmi@1.0.0\tactive" in proc.stdout


def test_bad_input_is_one_line_and_exit_1(demo_shelf: Path) -> None:
    proc = kgrid("run", "demo-bmi", "bmi", "--input", json.dumps({**PATIENT, "weight": -1}), shelf=demo_shelf)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "error: weight:" in proc.stderr
    assert json.loads(proc.stderr.splitlines()[0])["errors"][0]["field"] == "weight"


def test_malformed_json_is_a_usage_error(demo_shelf: Path) -> None:
    proc = kgrid("run", "demo-bmi", "bmi", "--input", "{weight: 70", shelf=demo_shelf)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr


def test_unknown_ko_lists_alternatives(demo_shelf: Path) -> None:
    proc = kgrid("info", "kfre", shelf=demo_shelf)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: no KO 'kfre' (available: demo-bmi)"


def test_debug_shows_traceback(demo_shelf: Path) -> None:
    proc = kgrid("--debug", "info", "kfre", shelf=demo_shelf)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_missing_argument_is_exit_2() -> None:
    assert kgrid("run").returncode == 2


def test_validate_and_test(demo_shelf: Path, demo_path: Path) -> None:
    proc = kgrid("validate", str(demo_path))
    assert proc.returncode == 0 and "valid" in proc.stdout
    proc = kgrid("test", "demo-bmi", "-v", shelf=demo_shelf)
    assert proc.returncode == 0 and "6 passed, 0 failed" in proc.stdout


def test_validate_fails_on_tampering(demo_path: Path) -> None:
    (demo_path / "tests.json").write_text((demo_path / "tests.json").read_text().replace("40", "41", 1))
    proc = kgrid("validate", str(demo_path))
    assert proc.returncode == 1 and "tests.json: content does not match" in proc.stderr


def test_info(demo_shelf: Path) -> None:
    proc = kgrid("info", "demo-bmi", shelf=demo_shelf)
    assert proc.returncode == 0
    assert "in  weight: number [kg]" in proc.stdout and "doi:10.1000/demo" in proc.stdout


def test_build_seal_only(demo_path: Path) -> None:
    (demo_path / "README.md").write_text("# Demo\n\nEdited card.\n")
    assert kgrid("validate", str(demo_path)).returncode == 1
    assert kgrid("build", str(demo_path), "--seal-only").returncode == 0
    assert kgrid("validate", str(demo_path)).returncode == 0


def test_build_without_source(demo_path: Path) -> None:
    proc = kgrid("build", str(demo_path))
    assert proc.returncode == 1 and "no src/build.py" in proc.stderr


def test_curator_commands_are_part_of_kgrid(tmp_path: Path) -> None:
    assert kgrid("init", "my-score", "--dir", str(tmp_path)).returncode == 0
    created = next(p.parent for p in tmp_path.rglob("metadata.json"))
    assert kgrid("validate", str(created)).returncode == 0
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    assert kgrid("pack", str(created), "--output", str(first)).returncode == 0
    assert kgrid("pack", str(created), "--output", str(second)).returncode == 0
    assert first.read_bytes() == second.read_bytes()


def test_score_is_part_of_kgrid() -> None:
    proc = kgrid("score", "--help")
    assert proc.returncode == 0 and "--input" in proc.stdout
