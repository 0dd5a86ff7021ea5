"""kgrid_py.population.spark: scoring a DataFrame with mapInArrow in Spark local mode."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

pytest.importorskip("pyspark", reason="pyspark is in the test extra: pip install -e '.[test]'")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java 17+: no java on PATH and no JAVA_HOME", allow_module_level=True)

from pyspark.sql import SparkSession

from kgrid_py.errors import InvalidKO
from kgrid_py.ko import KnowledgeObject
from kgrid_py.population import spark as kspark
from kgrid_py.population.scoring import MappingError

ROWS = [
    (1, 70.0, 1.75, "female", False, 40),
    (2, -5.0, 1.75, "male", True, 55),  # impossible weight
    (3, 80.0, 1.1, "male", None, 95),  # warns: height and age; smoker defaults to false
    (4, 60.0, 1.6, "other", True, 30),  # unknown sex
    (5, 95.5, 1.6, "male", True, 55),
    (6, 50.0, 1.8, "female", False, 18),
]
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

COLUMNS = ["id", "weight", "height", "sex", "smoker", "age"]


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("kgrid-py-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "2")
        .config("spark.driver.memory", "512m")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory, demo_template: Path) -> Path:
    root = tmp_path_factory.mktemp("spark-shelf")
    shutil.copytree(demo_template, root / "demo-bmi" / "1.0.0")
    return root


def expected(ko: KnowledgeObject, row: tuple) -> tuple[dict | None, list[str]]:
    inputs = {k: v for k, v in zip(COLUMNS[1:], row[1:], strict=True) if v is not None}
    try:
        out = ko.call("bmi", inputs)
    except ValueError:
        return None, []
    return out.result, out.warnings


@pytest.mark.parametrize("ship", ["path", "archive"])
def test_scores_a_dataframe_like_call(spark: SparkSession, shelf: Path, ship: str) -> None:
    if ship == "archive":
        pytest.importorskip("kgrid_py.curation.archive")
    frame = spark.createDataFrame(ROWS, COLUMNS).repartition(2)
    scored = kspark.score(frame, "demo-bmi@1", "bmi", shelf=shelf, keep=["id"], ship=ship)
    assert scored.columns == ["id", "bmi", "adjusted", "category", "obese", "error", "warnings"]
    rows = {r["id"]: r for r in scored.collect()}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    ko = KnowledgeObject.from_path(shelf / "demo-bmi" / "1.0.0")
    for row in ROWS:
        got = rows[row[0]]
        result, warnings = expected(ko, row)
        if result is None:
            assert got["error"] and got["bmi"] is None and got["category"] is None
        else:
            assert got["error"] is None
            assert got["bmi"] == pytest.approx(result["bmi"], rel=1e-12)
            assert (got["category"], got["obese"]) == (result["category"], result["obese"])
            assert list(got["warnings"]) == warnings
    assert rows[2]["error"].startswith("weight: ")
    assert rows[4]["error"] == "sex: must be one of female, male; got 'other'"


def test_mapping_and_units(spark: SparkSession, shelf: Path) -> None:
    frame = spark.createDataFrame([("p", 154.0, 1.75, "female", 40)], ["pid", "lb", "height", "sex", "age"])
    scored = kspark.score(
        frame, "demo-bmi", "bmi", shelf=shelf, mapping={"lb": "weight"}, units={"lb": "[lb_av]"}, keep=["pid"]
    )
    (row,) = scored.collect()
    assert row["pid"] == "p"
    assert row["bmi"] == pytest.approx(154 * 0.45359237 / 1.75**2, rel=1e-12)


def test_bad_mapping_fails_on_the_driver(spark: SparkSession, shelf: Path) -> None:
    frame = spark.createDataFrame([(1, 70.0)], ["id", "weight"])
    with pytest.raises(
        MappingError, match=r"input height is required.*; input sex is required.*; input age is required"
    ):
        kspark.score(frame, "demo-bmi", "bmi", shelf=shelf)


def job_for(ko: KnowledgeObject, digest: str | None = None) -> kspark._Job:
    return kspark._Job(str(ko.path.resolve()), digest or ko.content_digest, ko.ref, "bmi", (), (), ())


def test_executor_cache_loads_a_ko_once_per_process(shelf: Path) -> None:
    ko = KnowledgeObject.from_path(shelf / "demo-bmi" / "1.0.0")
    first = kspark.executor_ko(job_for(ko))
    assert kspark.executor_ko(job_for(ko)) is first


def test_executor_refuses_a_ko_other_than_the_drivers(shelf: Path) -> None:
    ko = KnowledgeObject.from_path(shelf / "demo-bmi" / "1.0.0")
    with pytest.raises(InvalidKO, match="differs from the driver's"):
        kspark.executor_ko(job_for(ko, digest="0" * 64))


@pytest.mark.parametrize(
    ("sizes", "rows", "expected"),
    [
        ([2, 2, 2], 4, [4, 2]),
        ([5], 4, [5]),
        ([1, 0, 3, 4, 1], 4, [4, 4, 1]),
        ([3, 3], 100, [6]),
        ([], 4, []),
    ],
)
def test_blocks_join_sparks_batches_in_order(sizes: list[int], rows: int, expected: list[int]) -> None:
    start, batches = 0, []
    for n in sizes:
        batches.append(pa.record_batch({"i": pa.array(range(start, start + n), pa.int64())}))
        start += n
    out = list(kspark.blocks(iter(batches), rows))
    assert [b.num_rows for b in out] == expected
    assert [v for b in out for v in b.column("i").to_pylist()] == list(range(start))


def test_executor_scorer_is_built_once_per_job_and_schema(shelf: Path) -> None:
    ko = KnowledgeObject.from_path(shelf / "demo-bmi" / "1.0.0")
    schema = pa.schema([("weight", pa.float64()), ("height", pa.float64()), ("sex", pa.string()), ("age", pa.int64())])
    first = kspark.executor_scorer(job_for(ko), schema)
    assert kspark.executor_scorer(job_for(ko), schema) is first
    other = pa.schema([*schema, ("smoker", pa.bool_())])
    assert kspark.executor_scorer(job_for(ko), other) is not first
