"""kgrid score types --keep columns read from CSV by the whole column; inputs keep the KO's own types."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from kgrid_py.cli.population import score
from kgrid_py.ko import KnowledgeObject
from kgrid_py.population.scoring import score_file

BODY = ("70", "1.75", "female", "40")  # weight, height, sex, age: a row that scores


def write(path: Path, kept: dict[str, list[str]], rows: list[tuple[str, ...]] | None = None) -> Path:
    n = len(next(iter(kept.values())))
    rows = rows or [BODY] * n
    header = [*kept, "weight", "height", "sex", "age"]
    lines = [",".join(header)] + [",".join([*(kept[k][i] for k in kept), *rows[i]]) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def ko(demo_path: Path) -> KnowledgeObject:
    return KnowledgeObject.from_path(demo_path)


@pytest.mark.parametrize(
    ("cells", "arrow_type", "values"),
    [
        pytest.param(["1", "22", "", "-3"], pa.int64(), [1, 22, None, -3], id="integers"),
        pytest.param(["007", "010", "123", "5"], pa.string(), ["007", "010", "123", "5"], id="leading-zeros"),
        pytest.param(["0", "12", "9", "0"], pa.int64(), [0, 12, 9, 0], id="zero-is-an-integer"),
        pytest.param(["1.5", "2", "-0.25", "1e3"], pa.float64(), [1.5, 2.0, -0.25, 1000.0], id="decimals"),
        pytest.param(["1.50", "2", "3", "4"], pa.string(), ["1.50", "2", "3", "4"], id="trailing-zero-is-text"),
        pytest.param(["NA", "1", "null", "2"], pa.string(), ["NA", "1", "null", "2"], id="null-words-are-text"),
        pytest.param(
            ["12345678901234567890", "1", "2", "3"], pa.string(), ["12345678901234567890", "1", "2", "3"], id="too-big"
        ),
        pytest.param(
            ["1234567890.123456", "1", "2", "3"], pa.string(), ["1234567890.123456", "1", "2", "3"], id="inexact"
        ),
        pytest.param(["", "", "", ""], pa.string(), [None] * 4, id="all-empty"),
        pytest.param(["a1", "1", "true", "2"], pa.string(), ["a1", "1", "true", "2"], id="labels"),
    ],
)
def test_keep_column_type_from_the_whole_column(
    ko: KnowledgeObject, tmp_path: Path, cells: list[str], arrow_type: pa.DataType, values: list
) -> None:
    source = write(tmp_path / "in.csv", {"pid": cells})
    score_file(ko, "bmi", source, tmp_path / "o.parquet", keep=["pid"])
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.schema.field("pid").type == arrow_type
    assert table.column("pid").to_pylist() == values
    # Written as CSV, integers and text read back as the cells were (quoted labels keep their zeros).
    score_file(ko, "bmi", source, tmp_path / "o.csv", keep=["pid"])
    options = pacsv.ConvertOptions(column_types={"pid": pa.string()}, null_values=[""], strings_can_be_null=True)
    back = pacsv.read_csv(tmp_path / "o.csv", convert_options=options).column("pid").to_pylist()
    if arrow_type != pa.float64():
        assert back == [c or None for c in cells]
    else:
        assert [float(c) for c in back] == values


def test_a_late_cell_changes_the_type_of_the_whole_column(ko: KnowledgeObject, tmp_path: Path) -> None:
    """Types come from every row, not the first batch: row 9 of 10 makes 'pid' text, 'score' a decimal."""
    pids = [str(i) for i in range(1, 11)]
    pids[8] = "A9"
    scores = [str(i) for i in range(10)]
    scores[9] = "0.5"
    source = write(tmp_path / "in.csv", {"pid": pids, "score": scores})
    score_file(ko, "bmi", source, tmp_path / "o.parquet", keep=["pid", "score"], batch_size=2)
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.schema.field("pid").type == pa.string() and table.column("pid").to_pylist() == pids
    assert table.column("score").to_pylist() == [float(s) for s in scores]


def test_missing_value_words_in_inputs_are_missing(ko: KnowledgeObject, tmp_path: Path) -> None:
    """In a scored input, NA/NULL/#N/A mean missing (an optional input takes its default), as before."""
    rows = [(w, "1.75", "female", "40") for w in ("70", "NA", "#N/A")]
    source = tmp_path / "in.csv"
    source.write_text(
        "pid,weight,height,sex,age,smoker\n" + "".join(f"p{i},{','.join(r)},NA\n" for i, r in enumerate(rows))
    )
    score_file(ko, "bmi", source, tmp_path / "o.parquet", keep=["pid"])
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("error").to_pylist() == [None, "weight: is missing", "weight: is missing"]
    assert table.column("adjusted")[0].as_py() == pytest.approx(70 / 1.75**2)  # smoker NA -> default false


def test_kgrid_score_keeps_an_integer_id_and_a_zip_code(demo_shelf: Path, tmp_path: Path) -> None:
    source = write(tmp_path / "in.csv", {"pid": ["101", "102", "103"], "zip": ["02139", "10001", "00501"]})
    args = ["demo-bmi@1", "bmi", "--shelf", str(demo_shelf), "--input", str(source)]
    result = CliRunner().invoke(score, [*args, "--output", str(tmp_path / "o.parquet"), "--keep", "pid,zip"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("pid").to_pylist() == [101, 102, 103]
    assert table.column("zip").to_pylist() == ["02139", "10001", "00501"]
