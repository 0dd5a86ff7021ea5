"""The `score` command, invoked on its own as the kgrid group will invoke it."""

from __future__ import annotations

from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from kgrid_py.cli.population import score

CSV = "id,weight_lb,height,sex,age\np1,154,1.75,female,40\np2,abc,1.75,male,50\np3,176,1.1,male,95\n"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    (path / "in.csv").write_text(CSV)
    return path


def invoke(runner: CliRunner, shelf: Path, *args: str) -> click.testing.Result:
    return runner.invoke(score, ["demo-bmi@1", "bmi", "--shelf", str(shelf), *args])


def test_score_csv_to_parquet_with_map_unit_keep(runner: CliRunner, demo_shelf: Path, work: Path) -> None:
    out = work / "out.parquet"
    result = invoke(
        runner,
        demo_shelf,
        "--input",
        str(work / "in.csv"),
        "--output",
        str(out),
        "--map",
        "weight_lb=weight",
        "--unit",
        "weight_lb=[lb_av]",
        "--keep",
        "id",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "demo-bmi@1.0.0 bmi"
    assert lines[1:5] == [
        "  rows read:          3",
        "  rows scored:        2",
        "  rows with errors:   1",
        "  rows with warnings: 1",
    ]
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["p1", "p2", "p3"]
    assert table.column("bmi")[0].as_py() == pytest.approx(154 * 0.45359237 / 1.75**2)
    assert table.column("error").to_pylist() == [None, "weight_lb: must be a number, got 'abc'", None]


def test_progress_lines_go_to_stderr(runner: CliRunner, demo_shelf: Path, work: Path, monkeypatch) -> None:
    monkeypatch.setenv("KGRID_PROGRESS_INTERVAL", "0")
    args = ["--input", str(work / "in.csv"), "--output", str(work / "out.csv"), "--map", "weight_lb=weight"]
    result = invoke(runner, demo_shelf, *args, "--batch-size", "1")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("rows/s") == 3
    assert "rows/s" not in result.stdout.splitlines()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--map", "weight_lb"], "--map 'weight_lb': expected NAME=VALUE", id="malformed-map"),
        pytest.param(["--map", "nope=weight"], "--map nope=weight: no column 'nope' in the input", id="no-column"),
        pytest.param(
            [],
            "input weight is required, but no column feeds it; column 'weight_lb' looks like it: "
            "map it with --map weight_lb=weight",
            id="unmapped-required",
        ),
        pytest.param(
            ["--map", "weight_lb=weight", "--unit", "weight_lb=mol"], "unit 'mol' cannot be converted", id="bad-unit"
        ),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(
    runner: CliRunner, demo_shelf: Path, work: Path, args: list[str], message: str
) -> None:
    result = invoke(runner, demo_shelf, "--input", str(work / "in.csv"), "--output", str(work / "o.parquet"), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["in.csv"]


def test_unknown_function_exits_1_with_one_line(runner: CliRunner, demo_shelf: Path, work: Path) -> None:
    result = runner.invoke(
        score,
        ["demo-bmi", "nope", "--shelf", str(demo_shelf), "--input", str(work / "in.csv"), "--output", "o.parquet"],
    )
    assert result.exit_code == 1
    assert result.stderr == "error: demo-bmi@1.0.0 has no function 'nope' (available: bmi)\n"


def test_unknown_ko_exits_1(runner: CliRunner, demo_shelf: Path, work: Path) -> None:
    result = runner.invoke(
        score, ["nope", "bmi", "--shelf", str(demo_shelf), "--input", str(work / "in.csv"), "--output", "o.parquet"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no KO 'nope'")


def test_registered_in_a_group_with_debug_shows_the_exception(demo_shelf: Path, work: Path) -> None:
    @click.group()
    @click.option("--debug", is_flag=True)
    @click.pass_context
    def group(ctx: click.Context, debug: bool) -> None:
        ctx.obj = {"debug": debug}

    group.add_command(score)
    args = ["score", "demo-bmi", "nope", "--shelf", str(demo_shelf), "--input", str(work / "in.csv")]
    result = CliRunner().invoke(group, ["--debug", *args, "--output", "o.parquet"])
    assert result.exit_code == 1
    assert isinstance(result.exception, LookupError)


def test_shelf_from_the_environment(runner: CliRunner, demo_shelf: Path, work: Path, monkeypatch) -> None:
    monkeypatch.setenv("KGRID_SHELF", str(demo_shelf))
    args = ["demo-bmi@1", "bmi", "--input", str(work / "in.csv"), "--output", str(work / "out.parquet")]
    result = runner.invoke(score, [*args, "--map", "weight_lb=weight", "--unit", "weight_lb=[lb_av]", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(work / "out.parquet").num_rows == 3


def test_a_manifest_url_in_the_environment_is_synced(runner: CliRunner, work: Path, monkeypatch) -> None:
    url = "http://127.0.0.1:9/manifest.json"  # nothing listens: the sync is tried and fails
    monkeypatch.setenv("KGRID_SHELF", url)
    monkeypatch.setenv("KGRID_CACHE", str(work / "cache"))
    args = ["demo-bmi@1", "bmi", "--input", str(work / "in.csv"), "--output", str(work / "out.parquet")]
    result = runner.invoke(score, args)
    assert result.exit_code == 1
    assert f"error: {url}: ConnectionError" in result.output
