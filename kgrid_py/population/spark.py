"""Score a Spark DataFrame through a KO function with ``mapInArrow``.

    from kgrid_py.population.spark import score
    scored = score(patients, "kfre@1", "four-variable", keep=["patient_id"],
                   mapping={"acr": "uacr"}, units={"uacr": "mg/mmol"})
    scored.write.parquet("s3://bucket/kfre-scores/")

The result has one row per input row: the ``keep`` columns, the function's outputs, ``error``
(null when the row was scored) and ``warnings`` (an array of messages). Mapping, units and keep
work as in :func:`kgrid_py.population.scoring.score_file`, and the rows are checked by the same library code;
they are checked against the DataFrame's schema on the driver, before any job starts.

How the KO reaches the executors
--------------------------------
The driver resolves ``ref`` on its shelf, loads and verifies the KO, and sends the executors its
folder path and content digest (``ship="path"``, the default) or, with ``ship="archive"``, the
KO packed as an archive (:mod:`kgrid_py.curation.archive`) inside the task closure. Each Python worker
process loads the KO once (the archive is unpacked into a temporary folder, checking every
digest), verifies every file against its metadata, checks that its content digest is the one the
driver resolved, and keeps it, with its one ONNX Runtime session per model, in a module-level
cache for every later task and batch, with the resolved column plan (:class:`BatchScorer`) for
each input schema. Spark reuses Python workers by default
(``spark.python.worker.reuse``), so that is one load per worker process, not per task. ONNX
Runtime uses one intra-op thread per session (``KGRID_ORT_INTRA_THREADS``), since Spark already
runs one task per core.

Running on a cluster
--------------------
1. Every executor needs the same Python environment as the driver, with ``kgrid-py`` (and so
   pyarrow and onnxruntime) installed: bake it into the cluster image, or ship a packed virtual
   environment (``venv-pack`` / ``conda-pack``) with ``--archives env.tar.gz#env`` and
   ``PYSPARK_PYTHON=./env/bin/python``.
2. The KO: with ``ship="path"`` the KO folder must be readable at the same path on every
   executor (a shared file system such as NFS, or a path baked into the image). Otherwise use
   ``ship="archive"``: only the driver needs the shelf, and the archive travels with the tasks.
   Either way an executor refuses a KO whose files or content digest differ from the driver's.
3. Each task joins Spark's Arrow batches into blocks of at least :data:`BLOCK_ROWS` (65,536)
   rows and scores a block with one ONNX run, so the per-batch cost is amortised whatever
   ``spark.sql.execution.arrow.maxRecordsPerBatch`` is; raising that setting (to 65,536) also
   saves Spark's own per-batch cost of moving Arrow data between the JVM and Python. Set
   ``spark.executor.cores`` to the cores you want busy; each task scores its partition in turn.

    spark-submit --master yarn --conf spark.sql.execution.arrow.maxRecordsPerBatch=65536 \\
        --archives kgrid-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python score_job.py
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from kgrid_py.curation.remote import local_shelf
from kgrid_py.errors import InvalidKO
from kgrid_py.ko import KnowledgeObject
from kgrid_py.population.scoring import BatchScorer
from kgrid_py.shelf import load

__all__ = ["score"]

SHIPPING = ("path", "archive")

# One verified KO per (folder, content digest) per Python worker process.
_KOS: dict[tuple[str, str], KnowledgeObject] = {}
_SCORERS: dict[tuple[_Job, pa.Schema], BatchScorer] = {}
_LOCK = threading.Lock()
BLOCK_ROWS = 65_536  # rows scored at once on an executor (see blocks())


@dataclass(frozen=True)
class _Job:
    """What every task needs to rebuild the scorer: small and picklable."""

    path: str
    digest: str
    ref: str
    function: str
    mapping: tuple[tuple[str, str], ...]
    units: tuple[tuple[str, str], ...]
    keep: tuple[str, ...]
    archive: bytes | None = None


def score(
    dataframe: Any,
    ref: str,
    endpoint: str,
    *,
    shelf: str | os.PathLike[str] | None = None,
    mapping: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    keep: Sequence[str] | None = None,
    ship: str = "path",
) -> Any:
    """Score every row of a Spark DataFrame through ``endpoint`` of the KO ``ref``; see the module docstring.

    Raises :class:`kgrid_py.population.scoring.MappingError` on the driver when the columns do not fit.
    """
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    if ship not in SHIPPING:
        raise ValueError(f"ship must be one of {', '.join(SHIPPING)}, not {ship!r}")
    ko = load(ref, shelf=local_shelf(shelf))  # a manifest URL is synced on the driver
    scorer = BatchScorer(ko, endpoint, to_arrow_schema(dataframe.schema), mapping=mapping, units=units, keep=keep or ())
    archive = None
    if ship == "archive":
        from kgrid_py.curation.archive import pack

        archive = pack(ko.path)
    job = _Job(
        path=str(Path(ko.path).resolve()),
        digest=ko.content_digest,
        ref=ko.ref,
        function=endpoint,
        mapping=tuple(sorted((mapping or {}).items())),
        units=tuple(sorted((units or {}).items())),
        keep=tuple(keep or ()),
        archive=archive,
    )
    selected = dataframe.select(*[dataframe[name] for name in scorer.needed])
    return selected.mapInArrow(functools.partial(_score_batches, job), from_arrow_schema(scorer.output_schema))


def _score_batches(job: _Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Runs on the executors: blocks of Spark's batches through the worker's cached scorer."""
    scorer: BatchScorer | None = None
    for block in blocks(batches, BLOCK_ROWS):
        if scorer is None:
            scorer = executor_scorer(job, block.schema)
        yield scorer.score(block)


def blocks(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Spark's Arrow batches joined into blocks of at least ``rows`` rows (the last may be smaller), in order.

    Each block is one ``call_batch`` and one ONNX run, so its fixed cost is paid per ``rows``
    rows whatever ``spark.sql.execution.arrow.maxRecordsPerBatch`` is (default 10,000); memory
    stays bounded by ``rows`` plus one of Spark's batches.
    """
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
            pending, count = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def executor_scorer(job: _Job, schema: pa.Schema) -> BatchScorer:
    """The scorer for ``job`` and this input schema in this process: built once, reused by every task."""
    key = (job, schema)
    scorer = _SCORERS.get(key)
    if scorer is None:
        ko = executor_ko(job)
        scorer = BatchScorer(ko, job.function, schema, mapping=dict(job.mapping), units=dict(job.units), keep=job.keep)
        with _LOCK:
            _SCORERS[key] = scorer
    return scorer


def executor_ko(job: _Job) -> KnowledgeObject:
    """The verified KO for ``job`` in this process, loaded on first use and then reused."""
    key = (job.path, job.digest)
    ko = _KOS.get(key)
    if ko is not None:
        return ko
    with _LOCK:
        ko = _KOS.get(key)
        if ko is None:
            folder = Path(job.path)
            if job.archive is not None:
                from kgrid_py.curation.archive import extract

                folder = Path(tempfile.mkdtemp(prefix="kgrid-ko-")) / "ko"
                extract(job.archive, folder)
            ko = KnowledgeObject.from_path(folder)
            if ko.content_digest != job.digest:
                raise InvalidKO(
                    f"{job.ref} at {folder}: content digest {ko.content_digest[:12]} differs from the driver's "
                    f"{job.digest[:12]}; the executors see another copy of the KO"
                )
            _KOS[key] = ko
    return ko
