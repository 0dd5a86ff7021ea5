"""call_batch and kgrid score read a table the same way: keep, ignore, refuse, and name errors the caller's way."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import kgrid_py
from kgrid_py.cli.population import score
from kgrid_py.errors import InputError
from kgrid_py.ko import KnowledgeObject

REPO = Path(__file__).resolve().parent.parent
ROWS = {
    "weight": [70.0, 80.0, 90.0],
    "height": [1.75, 1.8, 1.1],
    "sex": ["female", "male", "male"],
    "age": [40, 50, 95],
}


@pytest.fixture
def ko(demo_path: Path) -> KnowledgeObject:
    return KnowledgeObject.from_path(demo_path)


def test_keep_carries_columns_unchanged_and_first(ko: KnowledgeObject) -> None:
    ids = pa.array([7, None, 9], type=pa.int64())
    codes = pa.array(["007", "010", None])
    table = pa.table({"id": ids, "code": codes, **ROWS})
    out = ko.call_batch("bmi", table, keep=["id", "code"])
    assert out.kept["id"].combine_chunks() == ids
    arrow = out.to_arrow()
    assert arrow.column_names[:2] == ["id", "code"]
    assert arrow.schema.field("id").type == pa.int64() and arrow.schema.field("code").type == pa.string()
    assert arrow.column("id").to_pylist() == [7, None, 9] and arrow.column("code").to_pylist() == ["007", "010", None]
    assert list(out["bmi"]) == list(ko.call_batch("bmi", ROWS)["bmi"])


def test_keep_from_pandas_keeps_the_dtype(ko: KnowledgeObject) -> None:
    pd = pytest.importorskip("pandas", reason="pandas is a test dependency")
    frame = pd.DataFrame({"pid": ["0001", "0002", "0003"], **ROWS})
    out = ko.call_batch("bmi", frame, keep=["pid"])
    assert out.to_pandas()["pid"].tolist() == ["0001", "0002", "0003"]


def test_other_columns_are_ignored_as_kgrid_score_ignores_them(ko: KnowledgeObject, demo_shelf: Path, tmp_path):
    table = pa.table({"note": ["a", "b", "c"], "visit_date": ["2024-01-01"] * 3, **ROWS})
    library = ko.call_batch("bmi", table)
    assert (library.errors, list(library["bmi"])) == (
        ko.call_batch("bmi", ROWS).errors,
        list(ko.call_batch("bmi", ROWS)["bmi"]),
    )
    pq.write_table(table, tmp_path / "in.parquet")
    result = CliRunner().invoke(
        score,
        [
            *("demo-bmi@1", "bmi", "--shelf", str(demo_shelf), "--input", str(tmp_path / "in.parquet")),
            *("--output", str(tmp_path / "out.parquet"), "--no-progress"),
        ],
    )
    assert result.exit_code == 0, result.output
    cli = pq.read_table(tmp_path / "out.parquet")
    assert cli.column("bmi").to_pylist() == library.to_arrow().column("bmi").to_pylist()
    assert cli.column("warnings").to_pylist() == library.to_arrow().column("warnings").to_pylist()


def test_a_single_call_stays_strict(ko: KnowledgeObject) -> None:
    with pytest.raises(InputError, match="note: is not an input"):
        ko.call("bmi", {"weight": 70, "height": 1.75, "sex": "female", "age": 40, "note": "x"})


@pytest.mark.parametrize(
    ("column", "message"),
    [
        pytest.param("Smoker", "column 'Smoker' looks like input 'smoker'", id="other-case"),
        pytest.param("smokr", "column 'smokr' looks like input 'smoker'", id="near-spelling"),
        pytest.param("race", "column 'race' is no longer an input of this function", id="removed"),
    ],
)
def test_columns_that_would_change_a_result_silently_are_refused(
    ko: KnowledgeObject, demo_shelf: Path, tmp_path: Path, column: str, message: str
) -> None:
    table = pa.table({column: [True, True, True], **ROWS})
    with pytest.raises(InputError, match=message):
        ko.call_batch("bmi", table)
    pq.write_table(table, tmp_path / "in.parquet")
    args = ["demo-bmi@1", "bmi", "--shelf", str(demo_shelf), "--input", str(tmp_path / "in.parquet")]
    result = CliRunner().invoke(score, [*args, "--output", str(tmp_path / "out.parquet")])
    assert result.exit_code == 2 and message in result.stderr
    # keep= (or --keep) says the column is the caller's own: it is then carried, not refused.
    assert ko.call_batch("bmi", table, keep=[column]).kept[column].to_pylist() == [True, True, True]


def test_errors_and_warnings_name_the_callers_column_and_unit(ko: KnowledgeObject) -> None:
    spec = {f.name: f for f in ko.function("bmi").inputs}
    lb = next(u.factor for u in spec["weight"].accepted_units if u.unit == "[lb_av]")
    table = {"w_lb": [-5.0, 154.0], "h_cm": [175.0, 110.0], "sex": ["female", "male"], "age": [40, 50]}
    out = ko.call_batch(
        "bmi", table, mapping={"w_lb": "weight", "h_cm": "height"}, units={"w_lb": "[lb_av]", "h_cm": "cm"}
    )
    hard = spec["weight"].hard_bounds
    assert out.errors[0] == (
        f"w_lb: -5 [lb_av] is impossible here: must be > {hard.minimum / lb:g} and <= {hard.maximum / lb:g}"
    )
    population = spec["height"].population_bounds
    assert out.warnings[1] == (
        f"h_cm: 110 cm is outside the intended population (>= {population.minimum * 100:g} and "
        f"<= {population.maximum * 100:g}); the result is an extrapolation.",
    )
    # The same rows under the KO's own names and units say what they always said.
    plain = ko.call_batch(
        "bmi", {"weight": [-5 * lb, 70.0], "height": [1.75, 1.1], **{k: table[k] for k in ("sex", "age")}}
    )
    assert plain.errors[0].startswith("weight: ") and plain.warnings[1][0].startswith("height: 1.1 m is outside")


@pytest.mark.skipif(not (REPO / "knowledge_objects" / "kfre").is_dir(), reason="the kfre KO has not landed")
def test_kgrid_score_names_errors_by_the_users_column_and_unit(tmp_path: Path) -> None:
    kfre = kgrid_py.load("kfre@1", shelf=REPO / "knowledge_objects")
    uacr = next(f for f in kfre.function("four-variable").inputs if f.name == "uacr")
    factor = next(u.factor for u in uacr.accepted_units if u.unit == "mg/mmol")
    (tmp_path / "in.csv").write_text("pid,acr,age,sex,egfr\n1,3,63,female,45\n2,-1,70,male,25\n3,30,70,male,70\n")
    args = ["kfre@1", "four-variable", "--shelf", str(REPO / "knowledge_objects"), "--input", str(tmp_path / "in.csv")]
    args += ["--output", str(tmp_path / "out.parquet"), "--keep", "pid", "--map", "acr=uacr", "--unit", "uacr=mg/mmol"]
    result = CliRunner().invoke(score, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    out = pq.read_table(tmp_path / "out.parquet")
    error = out.column("error")[1].as_py()
    hard = uacr.hard_bounds
    assert (
        error
        == f"acr: -1 mg/mmol is impossible here: must be > {hard.minimum / factor:g} and <= {hard.maximum / factor:g}"
    )
    assert "uacr" not in error and "mg/g" not in error
    assert out.column("error")[0].as_py() is None and out.column("warnings")[2].as_py()[0].startswith("egfr: 70 ")
