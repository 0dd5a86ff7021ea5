"""kgrid_py.population.scoring: streaming a whole file through a KO function."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from kgrid_py.ko import KnowledgeObject
from kgrid_py.population.scoring import (
    BatchScorer,
    MappingError,
    ScoringError,
    Tally,
    detect_format,
    make_progress,
    parse_pairs,
    score_file,
)
from kgrid_py.shelf import load

REPO = Path(__file__).resolve().parent.parent
KFRE = REPO / "knowledge_objects" / "kfre" / "1.0.0"

# id, weight (kg), height (m), sex, smoker, age: row 2 and 4 are bad, row 3 warns (height, age).
ROWS = [
    ("a1", "70", "1.75", "female", "false", "40"),
    ("a2", "abc", "1.75", "male", "true", "55"),
    ("a3", "80", "1.1", "male", "", "95"),
    ("a4", "60", "1.6", "other", "yes", "30"),
    ("a5", "95.5", "1.6", "male", "true", "55"),
]
HEADER = ("id", "weight", "height", "sex", "smoker", "age")


@pytest.fixture
def ko(demo_path: Path) -> KnowledgeObject:
    return KnowledgeObject.from_path(demo_path)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder holding only what a test writes (the demo shelf lives beside it)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def write_csv(path: Path, rows: list[tuple[str, ...]] = ROWS, header: tuple[str, ...] = HEADER) -> Path:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


def typed_rows(rows: list[tuple[str, ...]] = ROWS) -> list[dict]:
    """The CSV rows as JSON-ish values (bad ones kept as they are)."""
    out = []
    for rid, weight, height, sex, smoker, age in rows:
        try:
            w: object = float(weight)
        except ValueError:
            w = weight
        out.append(
            {
                "id": rid,
                "weight": w,
                "height": float(height),
                "sex": sex,
                "smoker": {"true": True, "false": False, "yes": True, "": None}[smoker],
                "age": int(age),
            }
        )
    return out


def expected_row(ko: KnowledgeObject, row: dict) -> tuple[dict | None, list[str]]:
    inputs = {k: v for k, v in row.items() if k != "id" and v is not None}
    try:
        out = ko.call("bmi", inputs)
    except ValueError:
        return None, []
    return out.result, out.warnings


def check_against_call(ko: KnowledgeObject, table: pa.Table, rows: list[dict]) -> None:
    assert table.num_rows == len(rows)
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    for i, row in enumerate(rows):
        result, warnings = expected_row(ko, row)
        got = {name: table.column(name)[i].as_py() for name in ("bmi", "adjusted", "category", "obese")}
        if result is None:
            assert table.column("error")[i].as_py(), f"row {i} should have an error"
            assert got == {"bmi": None, "adjusted": None, "category": None, "obese": None}
        else:
            assert table.column("error")[i].as_py() is None
            assert got["bmi"] == pytest.approx(result["bmi"], rel=1e-12)
            assert got["adjusted"] == pytest.approx(result["adjusted"], rel=1e-12)
            assert (got["category"], got["obese"]) == (result["category"], result["obese"])
            assert list(table.column("warnings")[i].as_py()) == warnings


# -- formats ---------------------------------------------------------------------------------


def test_csv_to_parquet_matches_call_row_for_row(ko: KnowledgeObject, work: Path) -> None:
    summary = score_file(ko, "bmi", write_csv(work / "in.csv"), work / "out.parquet", keep=["id"])
    table = pq.read_table(work / "out.parquet")
    assert table.column_names == ["id", "bmi", "adjusted", "category", "obese", "error", "warnings"]
    check_against_call(ko, table, typed_rows())
    assert table.column("error").to_pylist() == [
        None,
        "weight: must be a number, got 'abc'",
        None,
        "sex: must be one of female, male; got 'other'",
        None,
    ]
    assert (summary.tally.rows_read, summary.tally.rows_scored) == (5, 3)
    assert (summary.tally.rows_with_errors, summary.tally.rows_with_warnings) == (2, 1)


def test_parquet_to_csv(ko: KnowledgeObject, work: Path) -> None:
    rows = [r for r in typed_rows() if isinstance(r["weight"], float)]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, work / "in.parquet")
    score_file(ko, "bmi", work / "in.parquet", work / "out.csv", keep=["id"])
    out = pacsv.read_csv(work / "out.csv")
    assert out.column("id").to_pylist() == ["a1", "a3", "a4", "a5"]
    assert out.column("error").to_pylist()[2] == "sex: must be one of female, male; got 'other'"
    warnings = out.column("warnings").to_pylist()
    assert not warnings[0] and warnings[1].startswith("height: 1.1 m is outside the intended population")
    assert out.column("bmi").to_pylist()[0] == pytest.approx(70 / 1.75**2)


def test_json_lines_with_a_broken_line_keeps_every_row(ko: KnowledgeObject, work: Path) -> None:
    rows = typed_rows()
    lines = [json.dumps({k: v for k, v in r.items() if v is not None}) for r in rows]
    lines.insert(2, '{"id": "broken", "weight": 7')
    lines.insert(4, "[1, 2]")
    (work / "in.jsonl").write_text("\n".join(lines) + "\n")
    summary = score_file(ko, "bmi", work / "in.jsonl", work / "out.parquet", keep=["id"])
    table = pq.read_table(work / "out.parquet")
    errors = table.column("error").to_pylist()
    assert errors[2].startswith("line 3: not valid JSON")
    assert errors[4] == "line 5: not a JSON object"
    good = table.filter(pa.array([i not in (2, 4) for i in range(7)]))
    check_against_call(ko, good, rows)
    assert summary.tally == Tally(rows_read=7, rows_scored=3, rows_with_errors=4, rows_with_warnings=1)


def test_gzipped_tsv(ko: KnowledgeObject, work: Path) -> None:
    text = "\n".join("\t".join(r) for r in [HEADER, *ROWS]) + "\n"
    (work / "in.tsv.gz").write_bytes(gzip.compress(text.encode()))
    score_file(ko, "bmi", work / "in.tsv.gz", work / "out.parquet", keep=["id"])
    check_against_call(ko, pq.read_table(work / "out.parquet"), typed_rows())


def test_many_batches_keep_row_order(ko: KnowledgeObject, work: Path) -> None:
    n = 1000
    rng = np.random.default_rng(7)
    weight = rng.uniform(40, 120, n).round(1)
    weight[::97] = -1.0  # impossible: an error every 97 rows
    table = pa.table(
        {
            "id": np.arange(n),
            "weight": weight,
            "height": rng.uniform(1.5, 2.0, n).round(2),
            "sex": np.where(rng.random(n) < 0.5, "female", "male"),
            "age": rng.integers(18, 90, n),
        }
    )
    pq.write_table(table, work / "in.parquet")
    summary = score_file(ko, "bmi", work / "in.parquet", work / "out.parquet", keep=["id"], batch_size=64)
    out = pq.read_table(work / "out.parquet")
    assert out.column("id").to_pylist() == list(range(n))
    expected_bmi = np.where(weight > 0, weight / table.column("height").to_numpy() ** 2, np.nan)
    got = np.array(out.column("bmi").to_pylist(), dtype=float)
    np.testing.assert_allclose(got, expected_bmi, rtol=1e-12)
    assert summary.batches == math.ceil(n / 64)
    assert summary.tally.rows_with_errors == len(range(0, n, 97))


# -- mapping, units, keep --------------------------------------------------------------------


def test_map_and_unit_by_column_name(ko: KnowledgeObject, work: Path) -> None:
    header = ("id", "weight_lb", "height", "sex", "smoker", "age")
    rows = [("p", "154", "1.75", "female", "false", "40")]
    score_file(
        ko,
        "bmi",
        write_csv(work / "in.csv", rows, header),
        work / "out.parquet",
        mapping={"weight_lb": "weight"},
        units={"weight_lb": "[lb_av]"},
    )
    table = pq.read_table(work / "out.parquet")
    assert table.column_names == ["bmi", "adjusted", "category", "obese", "error", "warnings"]
    assert table.column("bmi")[0].as_py() == pytest.approx(154 * 0.45359237 / 1.75**2, rel=1e-12)


def test_unit_by_input_name_and_null_optional_takes_default(ko: KnowledgeObject, work: Path) -> None:
    table = pa.table({"weight": [154.0], "height": [1.75], "sex": ["male"], "smoker": pa.array([None], pa.bool_())})
    table = table.append_column("age", pa.array([40]))
    pq.write_table(table, work / "in.parquet")
    score_file(ko, "bmi", work / "in.parquet", work / "out.parquet", units={"weight": "[lb_av]"})
    out = pq.read_table(work / "out.parquet")
    bmi = 154 * 0.45359237 / 1.75**2
    assert out.column("adjusted")[0].as_py() == pytest.approx(bmi - 0.25)  # smoker defaulted to false


@pytest.mark.skipif(not (KFRE / "metadata.json").exists(), reason="the kfre KO has not landed")
def test_kfre_uacr_in_mg_per_mmol(work: Path) -> None:
    kfre = load(str(KFRE))
    table = pa.table(
        {
            "id": [1, 2],
            "age": [63.0, 70.0],
            "sex": ["female", "male"],
            "egfr": [45.0, 25.0],
            "acr_mmol": [3.0, 50.0],
        }
    )
    pq.write_table(table, work / "in.parquet")
    score_file(
        kfre,
        "four-variable",
        work / "in.parquet",
        work / "out.parquet",
        mapping={"acr_mmol": "uacr"},
        units={"uacr": "mg/mmol"},
        keep=["id"],
    )
    out = pq.read_table(work / "out.parquet")
    for i, (age, sex, egfr, acr) in enumerate([(63, "female", 45, 3.0), (70, "male", 25, 50.0)]):
        want = kfre.call("four-variable", {"age": age, "sex": sex, "egfr": egfr, "uacr": acr * 8.84}).result
        assert out.column("risk_2y")[i].as_py() == pytest.approx(want["risk_2y"], rel=1e-9)
        assert out.column("risk_5y")[i].as_py() == pytest.approx(want["risk_5y"], rel=1e-9)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"mapping": {"nope": "weight"}}, "--map nope=weight: no column 'nope' in the input", id="map-col"),
        pytest.param({"mapping": {"id": "mass"}}, "--map id=mass: 'mass' is not an input", id="map-input"),
        pytest.param({"keep": ["nope"]}, "--keep nope: no such column in the input", id="keep-missing"),
        pytest.param({"units": {"weight": "mol"}}, "unit 'mol' cannot be converted", id="bad-unit"),
        pytest.param({"units": {"id": "kg"}}, "--unit id=kg: 'id' is neither an input", id="unit-not-input"),
    ],
)
def test_mapping_errors_fail_before_writing(ko: KnowledgeObject, work: Path, options: dict, message: str) -> None:
    with pytest.raises(MappingError, match=None) as caught:
        score_file(ko, "bmi", write_csv(work / "in.csv"), work / "out.parquet", **options)
    assert message in str(caught.value)
    assert list(work.iterdir()) == [work / "in.csv"]


def test_missing_required_column_names_it(ko: KnowledgeObject, work: Path) -> None:
    header = ("id", "w", "height", "sex", "smoker", "age")
    with pytest.raises(
        MappingError, match=r"input weight is required, but no column feeds it; map one with --map COLUMN=weight"
    ):
        score_file(ko, "bmi", write_csv(work / "in.csv", ROWS, header), work / "out.parquet")


def test_keep_may_not_shadow_an_output(ko: KnowledgeObject, work: Path) -> None:
    header = ("bmi", "weight", "height", "sex", "smoker", "age")
    with pytest.raises(MappingError, match="--keep bmi: the output already has a column 'bmi'"):
        score_file(ko, "bmi", write_csv(work / "in.csv", ROWS, header), work / "out.parquet", keep=["bmi"])


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param(["a=b", " c = d "], {"a": "b", "c": "d"}, id="ok"),
        pytest.param(["a"], "--map 'a': expected NAME=VALUE", id="no-equals"),
        pytest.param(["a=b", "a=c"], "--map 'a' is given twice", id="twice"),
    ],
)
def test_parse_pairs(items: list[str], expected: dict | str) -> None:
    if isinstance(expected, dict):
        assert parse_pairs(items, "--map") == expected
    else:
        with pytest.raises(MappingError) as caught:
            parse_pairs(items, "--map")
        assert str(caught.value) == expected


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.csv", "csv"), ("a.CSV.gz", "csv"), ("a.tsv", "tsv"), ("a.pq", "parquet"), ("a.ndjson", "jsonl")],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name, ("csv", "tsv", "parquet", "jsonl")) == fmt


def test_output_may_not_be_the_input(ko: KnowledgeObject, work: Path) -> None:
    pq.write_table(pa.table({"x": [1]}), work / "same.parquet")
    with pytest.raises(MappingError, match="is the input"):
        score_file(ko, "bmi", work / "same.parquet", work / "same.parquet")


# -- atomic output ---------------------------------------------------------------------------


def big_csv(path: Path, n: int, broken_at: int | None = None) -> Path:
    lines = [",".join(HEADER)]
    for i in range(n):
        lines.append(f"r{i},{60 + i % 40},1.7{i % 10},{'female' if i % 2 else 'male'},false,{20 + i % 80}")
        if broken_at is not None and i == broken_at:
            lines.append("too,many,fields,here,for,the,header,row")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_interrupted_run_leaves_old_output_and_no_temp_file(ko: KnowledgeObject, work: Path) -> None:
    out = work / "out.parquet"
    out.write_bytes(b"the good output of yesterday")
    calls = []

    def interrupt(tally: Tally) -> None:
        calls.append(tally.rows_read)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_file(ko, "bmi", big_csv(work / "in.csv", 500), out, batch_size=100, on_batch=interrupt)
    assert calls == [100, 200]
    assert out.read_bytes() == b"the good output of yesterday"
    assert sorted(p.name for p in work.iterdir()) == ["in.csv", "out.parquet"]


def test_input_failing_mid_stream_leaves_old_output(ko: KnowledgeObject, work: Path) -> None:
    out = work / "out.csv"
    out.write_text("old\n")
    # Arrow parses CSV in blocks of MAX_ROW_BYTES (16 MiB): the broken row must lie past the first block.
    source = big_csv(work / "in.csv", 700_000, broken_at=690_000)
    assert source.stat().st_size > 16 << 20
    seen = []
    with pytest.raises(ScoringError, match="Expected 6 columns, got 8"):
        score_file(ko, "bmi", source, out, on_batch=lambda t: seen.append(t.rows_read))
    assert seen and seen[-1] < 700_000  # some batches were written to the temporary file first
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in work.iterdir()) == ["in.csv", "out.csv"]


def test_successful_run_replaces_old_output(ko: KnowledgeObject, work: Path) -> None:
    out = work / "out.parquet"
    out.write_bytes(b"old")
    score_file(ko, "bmi", write_csv(work / "in.csv"), out)
    assert pq.read_table(out).num_rows == len(ROWS)
    assert sorted(p.name for p in work.iterdir()) == ["in.csv", "out.parquet"]
    assert out.stat().st_mode & 0o044  # not the private mode of the temporary file


# -- bounded memory --------------------------------------------------------------------------


def test_memory_is_bounded_by_the_batch_not_the_file(ko: KnowledgeObject, work: Path) -> None:
    # 40 batches; reading ahead, scoring and writing behind hold a few at once, never a quarter.
    n, batch = 400_000, 10_000
    rng = np.random.default_rng(1)
    source = pa.table(
        {
            "id": [f"patient-{i:08d}" for i in range(n)],
            "weight": rng.uniform(40, 120, n),
            "height": rng.uniform(1.5, 2.0, n),
            "sex": np.where(rng.random(n) < 0.5, "female", "male"),
            "age": rng.integers(18, 90, n),
        }
    )
    pq.write_table(source, work / "in.parquet", row_group_size=batch)
    whole = source.nbytes
    del source
    seen: list[tuple[int, int, int]] = []

    def watch(tally: Tally) -> None:
        temp = [p for p in work.iterdir() if p.name.endswith(".partial")]
        assert len(temp) == 1
        seen.append((tally.rows_read, temp[0].stat().st_size, pa.total_allocated_bytes()))

    baseline = pa.total_allocated_bytes()
    score_file(ko, "bmi", work / "in.parquet", work / "out.parquet", keep=["id"], batch_size=batch, on_batch=watch)
    assert [rows for rows, _, _ in seen] == list(range(batch, n + 1, batch))
    sizes = [size for _, size, _ in seen]
    # Batches are counted only once written, so the file never shrinks between reports; two
    # batches finished between reports are both reported after the second write, so "grows" would
    # be a race, not a property.
    assert all(b >= a for a, b in itertools.pairwise(sizes)), "a batch was counted before it was written"
    assert sizes[0] > 0 and sizes[-1] > sizes[0]
    peak = max(allocated for _, _, allocated in seen) - baseline
    assert peak < whole / 4, f"arrow held {peak:,} bytes at once; the whole input is {whole:,}"


# -- progress and summary --------------------------------------------------------------------


def test_plain_progress_lines_and_summary(ko: KnowledgeObject, work: Path) -> None:
    stream = io.StringIO()
    summary = score_file(
        ko,
        "bmi",
        big_csv(work / "in.csv", 300),
        work / "out.parquet",
        batch_size=100,
        progress=make_progress(stream, interval=0.0),
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("scored 100 rows, ") and "rows/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("scored 300 rows, ") and "% done, ETA" in lines[-1]
    text = str(summary)
    assert "rows read:          300" in text and "rows scored:        300" in text
    old = sum(20 + i % 80 > 90 for i in range(300))  # ages over 90 warn
    assert "rows with errors:   0" in text and f"rows with warnings: {old}" in text


def test_bar_progress_on_a_terminal(ko: KnowledgeObject, work: Path) -> None:
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    score_file(ko, "bmi", big_csv(work / "in.csv", 300), work / "out.parquet", progress=make_progress(stream))
    assert "300/300" in stream.getvalue() and "rows/s" in stream.getvalue()


def test_batch_scorer_tally_counts_warnings_as_text(ko: KnowledgeObject) -> None:
    table = pa.table(
        {"weight": [70.0, 70.0, -1.0], "height": [1.75, 1.1, 1.7], "sex": ["male"] * 3, "age": [40, 40, 40]}
    )
    scorer = BatchScorer(ko, "bmi", table.schema, warnings_as_text=True)
    scored = scorer.score(table)
    assert scored.schema.field("warnings").type == pa.string()
    assert BatchScorer.tally(scored) == Tally(3, 2, 1, 1)
