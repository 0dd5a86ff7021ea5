"""`kgrid score` killed mid-run by SIGTERM or SIGINT: a real subprocess, a file big enough to be caught."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROWS = 600_000


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough rows that scoring them in batches of 500 takes seconds, not milliseconds."""
    path = tmp_path_factory.mktemp("big") / "in.csv"
    line = "{i},70.5,1.75,female,42\n"
    with path.open("w") as f:
        f.write("id,weight,height,sex,age\n")
        f.writelines(line.format(i=i) for i in range(ROWS))
    return path


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_removes_the_partial_file(
    demo_shelf: Path, big_csv: Path, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "scored.parquet"
    out.write_bytes(b"yesterday's good output")
    args = [sys.executable, "-m", "kgrid_py", "score", "demo-bmi@1", "bmi", "--shelf", str(demo_shelf)]
    args += ["--input", str(big_csv), "--output", str(out), "--keep", "id", "--batch-size", "500", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(out_dir.glob("*.partial")):  # scoring has started: the temporary file exists
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.01)
        time.sleep(0.3)  # some batches are written
        assert proc.poll() is None, "the run finished before it could be interrupted; make the file bigger"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == f"interrupted ({sig.name}): no output written"
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["scored.parquet"]
    assert out.read_bytes() == b"yesterday's good output"


def test_handlers_are_restored_after_a_run(demo_shelf: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kgrid_py.cli.population import score

    (tmp_path / "in.csv").write_text("weight,height,sex,age\n70,1.75,female,40\n")
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    args = ["demo-bmi@1", "bmi", "--shelf", str(demo_shelf), "--input", str(tmp_path / "in.csv")]
    result = CliRunner().invoke(score, [*args, "--output", str(tmp_path / "o.parquet"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert os.path.exists(tmp_path / "o.parquet")
