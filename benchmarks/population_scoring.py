"""Population scoring benchmark: KFRE and PLCOm2012, Parquet to Parquet, against raw ONNX Runtime.

    python benchmarks/population_scoring.py --rows 10000000 --spark-rows 1000000

For each KO, in one run:
1. end to end: ``kgrid_py.population.scoring.score_file`` from the synthetic Parquet file to a new Parquet
   file (``--keep id``), in a fresh child process so that its peak RSS (``ru_maxrss``) is its own;
2. the Parquet floor: in another fresh process, pyarrow alone reads the same input columns the
   scorer reads (``iter_batches``, same batch size) and writes the same output columns (the
   scored file's batches, loaded beforehand) with the same ``ParquetWriter`` settings, fsync and
   rename; no scoring. ``end to end / floor`` is the share of that I/O-only speed the scorer keeps;
3. raw ONNX Runtime: ``InferenceSession.run`` on the same rows, already decoded into the graph's
   float64 feeds in memory, batch by batch at the same batch size, one intra-op thread (as the
   library's sessions);
4. numpy: the same equation written with numpy on the same arrays (checked against ORT);
5. Spark local mode (``local[2]``): ``kgrid_py.population.spark.score`` on ``--spark-rows`` rows, read from
   Parquet and written to Parquet (session start-up excluded).
Writes a Markdown table to stdout and the figures as JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import synthetic_patients  # noqa: E402

import kgrid_py  # noqa: E402
from kgrid_py.population.scoring import BatchScorer, score_file  # noqa: E402

CASES = {
    "kfre": ("kfre@1.0.0", "four-variable"),
    "plco": ("plcom2012@1.0.0", "risk"),
}


# -- the equations in numpy ------------------------------------------------------------------


def kfre_numpy(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """4-variable KFRE (Tangri 2011; baseline survival Tangri 2016), risk = 1 - S0 ** exp(LP)."""
    lp = (
        -0.2201 * (f["age"] / 10 - 7.036)
        + 0.2467 * (f["sex"] - 0.5642)
        - 0.5567 * (f["egfr"] / 5 - 7.222)
        + 0.4510 * (np.log(f["uacr"]) - 5.137)
    )
    other = f["region"] > 0.5
    hazard = np.exp(lp)
    risks = []
    for s0_na, s0_other in ((0.9750, 0.9832), (0.9240, 0.9365)):
        log_s0 = np.where(other, np.log(s0_other), np.log(s0_na))
        risks.append(-np.expm1(hazard * log_s0))
    return risks[0], risks[1]


PLCO_RACE = np.array([0.0, 0.3944778, -0.7434744, -0.466585, 0.0, 1.027152])


def plco_numpy(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """PLCOm2012 (Tammemagi 2013): logistic model of six-year lung-cancer risk."""
    current = (f["smoking_status"] < 0.5).astype(np.float64)
    logit = (
        -4.532506
        + 0.0778868 * (f["age"] - 62.0)
        + PLCO_RACE[f["race"].astype(np.int64)]
        - 0.0812744 * (f["education"] - 4.0)
        - 0.0274194 * (f["bmi"] - 27.0)
        + 0.3553063 * f["copd"]
        + 0.4589971 * f["personal_cancer_history"]
        + 0.587185 * f["family_lung_cancer_history"]
        + 0.2597431 * current
        - 1.822606 * (10.0 / f["cigarettes_per_day"] - 0.4021541613)
        + 0.0317321 * (f["smoking_years"] - 27.0)
        - 0.0308572 * (f["years_since_quit"] - 10.0)
    )
    risk = 1.0 / (1.0 + np.exp(-logit))
    return risk, risk >= f["threshold"]


NUMPY = {"kfre": kfre_numpy, "plco": plco_numpy}


# -- measurements ----------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which starts afresh at exec.

    (``ru_maxrss`` is kept across fork and exec on Linux, so a child would report its parent's
    peak; it is only the fallback where /proc is missing.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(kind: str, source: Path, target: Path, batch_size: int) -> None:
    """Runs in its own process: score one file end to end and print the figures as JSON."""
    ref, function = CASES[kind]
    ko = kgrid_py.load(ref, shelf=ROOT / "knowledge_objects")
    before = peak_rss_mb()
    summary = score_file(ko, function, source, target, keep=["id"], batch_size=batch_size)
    t = summary.tally
    print(
        json.dumps(
            {
                "seconds": summary.seconds,
                "rows": t.rows_read,
                "scored": t.rows_scored,
                "errors": t.rows_with_errors,
                "warnings": t.rows_with_warnings,
                "peak_rss_mb": peak_rss_mb(),
                "rss_after_load_mb": before,
            }
        )
    )


def floor_child(kind: str, source: Path, scored: Path, batch_size: int) -> None:
    """Runs in its own process: read the scorer's input columns and write its output columns, no scoring."""
    ref, function = CASES[kind]
    ko = kgrid_py.load(ref, shelf=ROOT / "knowledge_objects")
    needed = BatchScorer(ko, function, pq.read_schema(source), keep=["id"]).needed
    out = pq.read_table(scored)
    outputs = out.to_batches(max_chunksize=batch_size)
    schema = out.schema
    del out
    target = scored.with_name(scored.name + ".floor")
    started = time.perf_counter()
    rows = 0
    with pq.ParquetFile(source, pre_buffer=False) as f, pq.ParquetWriter(target, schema, compression="snappy") as w:
        for batch, output in zip(
            f.iter_batches(batch_size=batch_size, columns=needed, use_threads=True), outputs, strict=True
        ):
            rows += batch.num_rows
            w.write_batch(output)
    with open(target, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(target, scored.with_name(scored.name + ".floor-done"))
    seconds = time.perf_counter() - started
    scored.with_name(scored.name + ".floor-done").unlink()
    print(json.dumps({"seconds": seconds, "rows": rows, "rows_per_s": rows / seconds}))


def feeds_for(kind: str, source: Path) -> tuple[dict[str, np.ndarray], Path, list[str]]:
    """The input file decoded into the graph's float64 feeds (every row), the model and its outputs."""
    ref, function = CASES[kind]
    ko = kgrid_py.load(ref, shelf=ROOT / "knowledge_objects")
    spec = ko.function(function)
    table = pq.read_table(source)
    feeds: dict[str, np.ndarray] = {}
    for field in spec.inputs:
        if field.name in table.column_names:
            column = table.column(field.name)
            if field.type == "enum":
                labels = np.asarray(column.to_numpy(zero_copy_only=False))
                values = np.zeros(len(labels))
                for i, label in enumerate(field.enum or []):
                    values[labels == label] = i
            else:
                values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
        else:
            default = field.default
            values = np.full(table.num_rows, float(field.enum.index(default) if field.enum else default))
        feeds[field.graph_name] = np.ascontiguousarray(values, dtype=np.float64)
    by_name = {field.name: feeds[field.graph_name] for field in spec.inputs}
    return by_name | feeds, ko.path / spec.model, [o.graph_name for o in spec.outputs]


def raw_ort(model: Path, feeds: dict[str, np.ndarray], outputs: list[str], batch_size: int) -> tuple[float, list]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    n = len(next(iter(feeds.values())))
    first = None
    started = time.perf_counter()
    for start in range(0, n, batch_size):
        out = session.run(outputs, {name: feeds[name][start : start + batch_size] for name in names})
        if first is None:
            first = out
    return time.perf_counter() - started, first


def spark_figure(kind: str, rows: int, data: Path, batch_size: int) -> dict:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from kgrid_py.population.spark import score

    source = data / f"{kind}-spark-{rows}.parquet"
    if not source.exists():  # several row groups, so that both cores get partitions
        synthetic_patients.write(kind, source, rows, chunk=max(rows // 8, 1))
    session = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.files.maxPartitionBytes", str(max(source.stat().st_size // 4, 1 << 20)))
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    ref, function = CASES[kind]
    target = data / f"{kind}-spark-scored"
    # Warm up: start the Python workers and load the KO in each, as a long job would once.
    warm = session.read.parquet(str(source)).limit(1000)
    score(warm, ref, function, shelf=ROOT / "knowledge_objects", keep=["id"]).collect()
    started = time.perf_counter()
    frame = session.read.parquet(str(source))
    scored = score(frame, ref, function, shelf=ROOT / "knowledge_objects", keep=["id"])
    scored.write.mode("overwrite").parquet(str(target))
    seconds = time.perf_counter() - started
    shutil.rmtree(target, ignore_errors=True)
    partitions = frame.rdd.getNumPartitions()
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "partitions": partitions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--spark-rows", type=int, default=1_000_000, help="0 skips Spark")
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--kind", choices=[*CASES, "all"], default="all")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SOURCE", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--floor-child", nargs=3, metavar=("KIND", "SOURCE", "SCORED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]), args.batch_size)
        return
    if args.floor_child:
        floor_child(args.floor_child[0], Path(args.floor_child[1]), Path(args.floor_child[2]), args.batch_size)
        return
    results: dict[str, dict] = {}
    kinds = list(CASES) if args.kind == "all" else [args.kind]
    for kind in kinds:
        source = args.data / f"{kind}-{args.rows}.parquet"
        if not source.exists():
            synthetic_patients.write(kind, source, args.rows)
        target = args.data / f"{kind}-{args.rows}-scored.parquet"
        command = [sys.executable, __file__, "--batch-size", str(args.batch_size), "--child", kind, str(source)]
        done = subprocess.run([*command, str(target)], check=True, capture_output=True, text=True)
        e2e = json.loads(done.stdout.strip().splitlines()[-1])
        command = [sys.executable, __file__, "--batch-size", str(args.batch_size), "--floor-child", kind, str(source)]
        done = subprocess.run([*command, str(target)], check=True, capture_output=True, text=True)
        floor = json.loads(done.stdout.strip().splitlines()[-1])
        target.unlink(missing_ok=True)
        feeds, model, outputs = feeds_for(kind, source)
        ort_seconds, first = raw_ort(model, feeds, outputs, args.batch_size)
        started = time.perf_counter()
        numpy_out = NUMPY[kind](feeds)
        numpy_seconds = time.perf_counter() - started
        head = min(args.batch_size, args.rows)
        agree = float(np.nanmax(np.abs(numpy_out[0][:head] - first[0])))
        n = e2e["rows"]
        results[kind] = {
            "rows": n,
            "end_to_end": e2e | {"rows_per_s": n / e2e["seconds"]},
            "parquet_floor": floor,
            "ratio_end_to_end_vs_floor": floor["seconds"] / e2e["seconds"],
            "raw_ort": {"seconds": ort_seconds, "rows_per_s": n / ort_seconds},
            "numpy": {"seconds": numpy_seconds, "rows_per_s": n / numpy_seconds, "max_abs_diff_vs_ort": agree},
        }
        results[kind]["ratio_end_to_end_vs_ort"] = ort_seconds / e2e["seconds"]
        del feeds
        if args.spark_rows:
            results[kind]["spark_local2"] = spark_figure(kind, args.spark_rows, args.data, args.batch_size)
        print(json.dumps({kind: results[kind]}), file=sys.stderr, flush=True)
    print(
        "| KO | rows | end to end rows/s | Parquet floor rows/s | e2e / floor | peak RSS | raw ORT rows/s "
        "| e2e / ORT | numpy rows/s | Spark local[2] rows/s | Spark per core / e2e |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        spark = r.get("spark_local2")
        spark_text = f"{spark['rows_per_s']:,.0f} ({spark['rows']:,} rows)" if spark else "-"
        per_core = f"{spark['rows_per_s'] / 2 / r['end_to_end']['rows_per_s']:.2f}x" if spark else "-"
        print(
            f"| {CASES[kind][0]} {CASES[kind][1]} | {r['rows']:,} | {r['end_to_end']['rows_per_s']:,.0f} "
            f"| {r['parquet_floor']['rows_per_s']:,.0f} | {r['ratio_end_to_end_vs_floor']:.2f}x "
            f"| {r['end_to_end']['peak_rss_mb']:,.0f} MB | {r['raw_ort']['rows_per_s']:,.0f} "
            f"| {r['ratio_end_to_end_vs_ort']:.2f}x | {r['numpy']['rows_per_s']:,.0f} | {spark_text} | {per_core} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
