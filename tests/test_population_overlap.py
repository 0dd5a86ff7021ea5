"""kgrid score reads, scores and writes on three threads: same output, row order, bounds and errors."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kgrid_py.ko import KnowledgeObject
from kgrid_py.population.pipeline import ReadAhead, WriteBehind
from kgrid_py.population.scoring import BatchScorer, ScoringError, Tally, score_file

N = 5_000


@pytest.fixture
def ko(demo_path: Path) -> KnowledgeObject:
    return KnowledgeObject.from_path(demo_path)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder holding only what a test writes (the demo shelf lives beside it)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def population(n: int = N, seed: int = 7) -> pa.Table:
    """Rows that score, warn (age, height outside the intended population) or fail (weight 0, sex 'x')."""
    rng = np.random.default_rng(seed)
    weight = rng.uniform(35, 140, n)
    weight[rng.random(n) < 0.03] = 0.0
    sex = np.where(rng.random(n) < 0.5, "female", "male").astype(object)
    sex[rng.random(n) < 0.02] = "x"
    return pa.table(
        {
            "id": [f"p{i:06d}" for i in range(n)],
            "weight": weight,
            "height": rng.uniform(1.0, 2.1, n),
            "sex": pa.array(sex, pa.string()),
            "smoker": rng.random(n) < 0.3,
            "age": rng.integers(10, 105, n),
        }
    )


def sequential(ko: KnowledgeObject, table: pa.Table, batch_size: int, as_text: bool = False) -> pa.Table:
    """The reference: the same batches scored one after another in this thread, no reader or writer."""
    scorer = BatchScorer(ko, "bmi", table.schema, keep=["id"], warnings_as_text=as_text)
    parts = [scorer.score(b) for b in table.to_batches(max_chunksize=batch_size)]
    return pa.Table.from_batches(parts, schema=scorer.output_schema)


@pytest.mark.parametrize("batch_size", [1, 64, 997])
def test_parquet_output_is_the_sequential_output_row_for_row(
    ko: KnowledgeObject, tmp_path: Path, batch_size: int
) -> None:
    table = population(300 if batch_size == 1 else N)
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=1_500)
    summary = score_file(
        ko, "bmi", tmp_path / "in.parquet", tmp_path / "out.parquet", keep=["id"], batch_size=batch_size
    )
    got = pq.read_table(tmp_path / "out.parquet")
    want = sequential(ko, table, batch_size)
    assert got.column("id").to_pylist() == table.column("id").to_pylist()  # row order
    assert got.equals(want), "the overlapped run wrote something else than scoring batch by batch"
    errors, warned = want.column("error").null_count, BatchScorer.tally(want.combine_chunks().to_batches()[0])
    assert summary.tally == Tally(table.num_rows, errors, table.num_rows - errors, warned.rows_with_warnings)
    assert 0 < summary.tally.rows_with_errors < table.num_rows and summary.tally.rows_with_warnings > 0


def test_csv_output_does_not_depend_on_the_batch_size(ko: KnowledgeObject, tmp_path: Path) -> None:
    table = population()
    pq.write_table(table, tmp_path / "in.parquet")
    one = score_file(ko, "bmi", tmp_path / "in.parquet", tmp_path / "one.csv", keep=["id"], batch_size=N)
    many = score_file(ko, "bmi", tmp_path / "in.parquet", tmp_path / "many.csv", keep=["id"], batch_size=37)
    assert (one.batches, many.batches) == (1, -(-N // 37))
    assert (tmp_path / "many.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert one.tally == many.tally


def test_a_failing_write_stops_the_run_and_leaves_no_file(
    ko: KnowledgeObject, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread's error reaches the caller; the old output stays and the partial file goes."""
    from kgrid_py.population import scoring

    pq.write_table(population(), work / "in.parquet")
    out = work / "out.parquet"
    out.write_bytes(b"old")
    real = scoring._Writer.write
    calls: list[int] = []

    def write(self: scoring._Writer, batch: pa.RecordBatch) -> None:
        calls.append(batch.num_rows)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(self, batch)

    monkeypatch.setattr(scoring._Writer, "write", write)
    seen: list[int] = []
    with pytest.raises(OSError, match="No space left"):
        score_file(ko, "bmi", work / "in.parquet", out, batch_size=100, on_batch=lambda t: seen.append(t.rows_read))
    assert seen == [100, 200]  # only what was written was reported
    assert len(calls) == 3  # nothing is written after the failure
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in work.iterdir()) == ["in.parquet", "out.parquet"]
    assert not [t for t in threading.enumerate() if t.name in ("kgrid-read-ahead", "kgrid-write-behind")]


def test_a_failing_read_mid_stream_is_a_scoring_error(ko: KnowledgeObject, work: Path) -> None:
    lines = ["id,weight,height,sex,smoker,age"] + [f"r{i},70,1.75,male,false,40" for i in range(300)]
    (work / "in.csv").write_text("\n".join([*lines, "a,b"]) + "\n")
    with pytest.raises(ScoringError, match="Expected 6 columns, got 2"):
        score_file(ko, "bmi", work / "in.csv", work / "out.parquet", batch_size=50)
    assert sorted(p.name for p in work.iterdir()) == ["in.csv"]
    assert not [t for t in threading.enumerate() if t.name in ("kgrid-read-ahead", "kgrid-write-behind")]


# -- the two threads -------------------------------------------------------------------------


def test_read_ahead_reads_the_next_item_while_the_consumer_works() -> None:
    started: list[threading.Event] = [threading.Event() for _ in range(4)]
    threads: set[str] = set()

    def items() -> Iterator[int]:
        for i in range(4):
            started[i].set()
            threads.add(threading.current_thread().name)
            yield i

    with ReadAhead(items()) as ahead:
        for i in ahead:
            if i < 3:  # deterministic overlap: the next read starts while item i is still held
                assert started[i + 1].wait(10), f"item {i + 1} was not read while item {i} was processed"
    assert threads == {"kgrid-read-ahead"}


@pytest.mark.parametrize("depth", [1, 3])
def test_read_ahead_is_bounded(depth: int) -> None:
    produced = 0

    def items() -> Iterator[int]:
        nonlocal produced
        for i in range(50):
            produced += 1
            yield i

    got = []
    with ReadAhead(items(), depth=depth) as ahead:
        for i in ahead:
            time.sleep(0.002)
            # produced counts the item in hand, up to depth waiting, and one whose read has begun
            assert produced - (i + 1) <= depth, f"{produced - (i + 1)} items read ahead with depth {depth}"
            got.append(i)
    assert got == list(range(50))


def test_read_ahead_close_stops_the_reader_and_runs_its_cleanup() -> None:
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            yield from range(1_000_000)
        finally:
            closed.set()

    ahead = ReadAhead(items())
    assert next(iter(ahead)) == 0
    ahead.close()
    assert closed.is_set() and not ahead._thread.is_alive()


def test_read_ahead_raises_the_readers_error_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ScoringError("broken row")

    got = []
    with pytest.raises(ScoringError, match="broken row"), ReadAhead(items()) as ahead:
        got.extend(ahead)
    assert got == [1, 2]


def test_write_behind_keeps_order_and_overlaps_the_producer() -> None:
    rng = random.Random(3)
    written: list[int] = []
    release = threading.Event()

    def write(item: int) -> None:
        if item == 0:
            assert release.wait(10), "put() waited for the write instead of returning"
        time.sleep(rng.random() / 1000)
        written.append(item)

    tokens = []
    with WriteBehind(write) as behind:
        behind.put(0, "t0")
        release.set()  # reached while item 0 is still being written
        for i in range(1, 200):
            behind.put(i, f"t{i}")
            tokens += behind.written()
        tokens += behind.finish()
    assert written == list(range(200))
    assert tokens == [f"t{i}" for i in range(200)]


def test_write_behind_is_bounded_and_raises_the_writers_error() -> None:
    written: list[int] = []
    pending = 0

    def write(item: int) -> None:
        nonlocal pending
        time.sleep(0.002)
        if item == 5:
            raise OSError("disk full")
        written.append(item)

    with pytest.raises(OSError, match="disk full"), WriteBehind(write) as behind:
        for i in range(100):
            behind.put(i, i)
            pending = i + 1 - len(written)
            assert pending <= 2, f"{pending} items unwritten with depth 1"  # the one queued + one being written
    assert written == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("cls", [ReadAhead, WriteBehind])
def test_depth_must_be_positive(cls: type) -> None:
    with pytest.raises(ValueError, match="depth must be at least 1"):
        cls(iter([]) if cls is ReadAhead else print, depth=0)
