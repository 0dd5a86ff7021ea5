"""Hostile input files: kgrid score reads them in bounded memory or refuses them with a clear error."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from kgrid_py.cli.population import score
from kgrid_py.ko import KnowledgeObject
from kgrid_py.population import scoring
from kgrid_py.population.scoring import ScoringError, score_file

HEADER = "id,weight,height,sex,age\n"
ROW = "1,70,1.75,female,40\n"


@pytest.fixture
def ko(demo_path: Path) -> KnowledgeObject:
    return KnowledgeObject.from_path(demo_path)


def run_cli(shelf: Path, source: Path, out: Path) -> tuple[int, str]:
    args = ["demo-bmi@1", "bmi", "--shelf", str(shelf), "--input", str(source), "--output", str(out), "--no-progress"]
    result = CliRunner().invoke(score, args)
    return result.exit_code, result.stderr


def test_a_csv_row_over_the_limit_is_refused_clearly(demo_shelf: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    with source.open("w") as f:  # a 33 MiB cell: rows to 16 MiB always pass, past 32 MiB never (two blocks)
        f.write(HEADER + ROW + "2,70,1.75,female," + "9" * (33 << 20) + "\n" + ROW)
    code, stderr = run_cli(demo_shelf, source, tmp_path / "out.parquet")
    assert (code, stderr) == (1, f"error: {source}: a row is longer than 16 MiB; refused to bound memory\n")
    assert not (tmp_path / "out.parquet").exists() and not list(tmp_path.glob("*.partial"))


def test_an_over_long_csv_header_is_refused(ko: KnowledgeObject, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("x" * ((16 << 20) + 10))
    with pytest.raises(ScoringError, match="the header row is longer than 16 MiB"):
        score_file(ko, "bmi", source, tmp_path / "out.parquet")


def test_a_csv_with_too_many_columns_is_refused_before_arrow_parses_it(ko: KnowledgeObject, tmp_path: Path) -> None:
    n = scoring.MAX_COLUMNS + 1
    source = tmp_path / "in.csv"
    source.write_text(",".join(f"c{i}" for i in range(n)) + "\n" + ",".join("1" for _ in range(n)) + "\n")
    with pytest.raises(ScoringError, match="the header has more than 100,000 columns"):
        score_file(ko, "bmi", source, tmp_path / "out.parquet")


def test_json_lines_an_over_long_line_or_a_huge_number_is_that_rows_error(ko: KnowledgeObject, tmp_path: Path):
    good = '{"weight": 70, "height": 1.75, "sex": "female", "age": 40}\n'
    source = tmp_path / "in.jsonl"
    with source.open("w") as f:
        f.write(good)
        f.write('{"weight": 70, "note": "' + "x" * (17 << 20) + '"}\n')
        f.write('{"weight": ' + "9" * 5000 + "}\n")
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
        f.write(good)
    score_file(ko, "bmi", source, tmp_path / "out.parquet")
    errors = pq.read_table(tmp_path / "out.parquet").column("error").to_pylist()
    assert errors[0] is None and errors[4] is None
    assert errors[1] == "line 2: longer than 16 MiB"
    assert errors[2].startswith("line 3: not usable JSON (Exceeds the limit (4300 digits)")
    assert errors[3] in ("line 4: not usable JSON (nested too deeply)", "line 4: not a JSON object")


def test_parquet_with_too_many_columns_is_refused_from_its_metadata(
    ko: KnowledgeObject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scoring, "MAX_COLUMNS", 50)  # a million-column file is slow to write in a test
    table = pa.table({f"c{i}": [1] for i in range(51)})
    pq.write_table(table, tmp_path / "in.parquet")
    with pytest.raises(ScoringError, match="51 columns, over the limit of 50"):
        score_file(ko, "bmi", tmp_path / "in.parquet", tmp_path / "out.parquet")


def test_parquet_footer_over_the_limit_is_refused_before_parsing(
    ko: KnowledgeObject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pq.write_table(pa.table({"weight": [70.0], "height": [1.75], "sex": ["f"], "age": [40]}), tmp_path / "in.parquet")
    monkeypatch.setattr(scoring, "MAX_PARQUET_FOOTER_BYTES", 100)
    with pytest.raises(ScoringError, match=r"its Parquet metadata is [\d,]+ bytes, over the 9.53674e-05 MiB limit"):
        score_file(ko, "bmi", tmp_path / "in.parquet", tmp_path / "out.parquet")


def test_parquet_with_a_huge_string_cell_is_refused_before_reading_it(
    ko: KnowledgeObject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scoring, "MAX_ROW_GROUP_BYTES", 1 << 20)
    table = pa.table({"weight": [70.0], "height": [1.75], "sex": ["female" + "x" * (2 << 20)], "age": [40]})
    pq.write_table(table, tmp_path / "in.parquet", compression="zstd")  # small on disk, 2 MiB once read
    with pytest.raises(ScoringError, match=r"row group 0 holds .* bytes of the columns read, over the 1 MiB limit"):
        score_file(ko, "bmi", tmp_path / "in.parquet", tmp_path / "out.parquet")
    # A huge column that is not read costs nothing.
    table = table.set_column(2, "sex", pa.array(["female"])).append_column("note", pa.array(["x" * (2 << 20)]))
    pq.write_table(table, tmp_path / "in.parquet")
    summary = score_file(ko, "bmi", tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert summary.tally.rows_scored == 1


def test_a_file_that_is_not_parquet_is_refused(ko: KnowledgeObject, tmp_path: Path) -> None:
    (tmp_path / "in.parquet").write_bytes(b"id,weight\n1,70\n")
    with pytest.raises(ScoringError, match="not a Parquet file"):
        score_file(ko, "bmi", tmp_path / "in.parquet", tmp_path / "out.parquet")
