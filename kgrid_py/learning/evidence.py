"""Build recalibration :class:`~kgrid_py.learning.recalibration.Evidence` from a validation file.

The file (CSV or Parquet) has one row per patient: the KO's inputs (columns named as the inputs),
the follow-up in days from the prediction (``time_days``), the cause (``cause``: 1 the outcome,
2 a competing event, 0 censored), and optionally ``site`` and ``call_date``. The risks are the
parent KO's own answers on those inputs (one batch run), so the update is fitted to exactly the
numbers its graph will post-process. Rows the KO refuses are left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kgrid_py.ko import KnowledgeObject
from kgrid_py.learning.recalibration import Evidence, Kind, RecalibrationError

__all__ = ["MAX_ROWS", "Columns", "evidence_from_table", "horizons_of", "read_table"]

MAX_ROWS = 5_000_000


@dataclass(frozen=True)
class Columns:
    time: str = "time_days"
    cause: str = "cause"
    site: str = "site"
    date: str = "call_date"


def read_table(path: Path) -> pa.Table:
    """A CSV or Parquet file as an Arrow table (at most :data:`MAX_ROWS` rows)."""
    try:
        table = pq.read_table(path) if path.suffix.lower() in (".parquet", ".pq") else pacsv.read_csv(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise RecalibrationError(f"{path}: cannot read it as CSV or Parquet: {exc}") from None
    if table.num_rows > MAX_ROWS:
        raise RecalibrationError(f"{path}: {table.num_rows} rows; at most {MAX_ROWS} are accepted")
    return table


def horizons_of(ko: KnowledgeObject, function: str, given: dict[str, float] | None) -> tuple[Kind, dict[str, float]]:
    """(kind, output -> horizon days) from ``given`` or the function's outcome declaration."""
    outcome = ko.function(function).outcome
    if outcome is not None and outcome.kind == "continuous":
        raise RecalibrationError(f"{ko.ref} {function}: a continuous outcome has no risk to recalibrate")
    kind: Kind = "logistic" if outcome is not None and outcome.kind == "binary" else "time-to-event"
    if given:
        return kind, dict(given)
    if outcome is None:
        raise RecalibrationError(f"{ko.ref} {function} declares no outcome; name the horizons (--horizon risk_5y=1826)")
    return kind, {h.output: float(h.days) for h in outcome.horizons}


def evidence_from_table(
    ko: KnowledgeObject,
    function: str,
    table: pa.Table,
    kind: Kind,
    horizons: dict[str, float],
    columns: Columns = Columns(),
    default_site: str = "local",
) -> tuple[Evidence, int]:
    """(evidence, rows refused by the KO)."""
    for name in (columns.time, columns.cause):
        if name not in table.column_names:
            raise RecalibrationError(f"the validation data has no column {name!r}")
    inputs = [f.name for f in ko.function(function).inputs if f.name in table.column_names]
    result = ko.call_batch(function, table.select(inputs))
    valid = np.array([e is None for e in result.errors], dtype=bool) if result.errors else np.ones(table.num_rows, bool)
    time = np.asarray(table[columns.time].to_numpy(zero_copy_only=False), dtype=np.float64)
    cause = np.asarray(table[columns.cause].to_numpy(zero_copy_only=False))
    if not np.all(np.isfinite(cause.astype(np.float64))):
        raise RecalibrationError(f"column {columns.cause!r} has missing values")
    site = (
        np.asarray(table[columns.site].cast(pa.string()).to_numpy(zero_copy_only=False), dtype=str)
        if columns.site in table.column_names
        else np.full(table.num_rows, default_site)
    )
    day = None
    if columns.date in table.column_names:
        dates = (
            pc.cast(table[columns.date], pa.date32())
            if table[columns.date].type != pa.date32()
            else table[columns.date]
        )
        day = np.asarray(pc.cast(dates, pa.int32()).to_numpy(zero_copy_only=False), dtype=np.float64)
    predicted = {o: np.asarray(result[o], dtype=np.float64) for o in horizons}
    for p in predicted.values():
        valid &= np.isfinite(p)
    rows = np.flatnonzero(valid)
    evidence = Evidence(
        kind,
        horizons,
        {o: p[rows] for o, p in predicted.items()},
        time[rows],
        cause[rows].astype(np.int64),
        site[rows],
        None if day is None else day[rows],
    )
    return evidence, int(table.num_rows - len(rows))
