"""How one KO version's function performs at each site: volume, drift and, with outcomes, accuracy.

Reads the capture store columnar (pyarrow; JSON columns parsed by Arrow's C++ JSON reader, never
``json.loads`` per row) and returns a plain dict that is both the JSON report and what the HTML
report renders. Rules it applies, which the report repeats:

- index call: a subject's first successful call in the window is the one judged against its
  outcome (repeated calls for one patient are not independent);
- time zero is the index call's UTC date; an outcome's time is whole days after it;
- several outcome rows for a subject combine: the event if any row has it (its earliest date), the
  latest follow-up, the competing event if any row has it (its earliest date);
- observed risk is Aalen-Johansen where the KO declares a competing event, else Kaplan-Meier;
- a binary outcome within H days is 1 if the event came by day H and 0 if the subject was followed
  to day H (or died first) without it; others are left out and counted;
- fewer than 10 events (or non-events): "insufficient data", never a number;
- an alert is a metric outside a range the KO declares; nothing else alerts.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version as dist_version
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from kgrid_py.learning.drift import summary_drift
from kgrid_py.learning.statistics import Metric, binary_metrics, continuous_metrics
from kgrid_py.learning.store import READ_CHUNK_ROWS, CaptureStore, StoreError, to_us
from kgrid_py.learning.survival import censoring_survival, time_to_event_metrics
from kgrid_py.learning.workers import WorkerFailed, run_worker
from kgrid_py.metadata import FunctionSpec, OutcomeSpec

__all__ = [
    "MonitorError",
    "alerts_of",
    "calls_numbers",
    "combined_outcomes",
    "json_objects",
    "link_outcomes",
    "monitor",
    "outcome_columns",
    "outcome_outputs",
    "outcomes_table",
    "parse_json_column",
    "site_section",
]

_DAY_US = 86_400_000_000
OUTCOME_COLUMNS = (
    "site",
    "subject_key",
    "event",
    "event_date",
    "followup_date",
    "competing_event",
    "competing_date",
    "value",
    "value_date",
)


class MonitorError(ValueError):
    """Raised when a monitoring run cannot be made (unknown function, nothing to read)."""


def outcomes_table(
    store: CaptureStore, outcome: str, site: str | None = None, columns: Sequence[str] = OUTCOME_COLUMNS
) -> pa.Table:
    """The stored outcome rows of one outcome (optionally one site), columnar.

    Dates come back as days since 1970-01-01 (int32), converted in SQL. ``columns`` (a subset of
    :data:`OUTCOME_COLUMNS`; ``site`` and ``subject_key`` always come) limits what is read: each
    value costs a Python object in the driver, and a time-to-event outcome has no ``value``.
    """
    unknown = [n for n in columns if n not in OUTCOME_COLUMNS]
    if unknown:
        raise ValueError(f"outcomes has no column(s) {', '.join(unknown)}")
    names = [n for n in OUTCOME_COLUMNS if n in {"site", "subject_key", *columns}]
    mark = "?" if store.engine.dialect.paramstyle == "qmark" else "%s"
    postgres = store.engine.dialect.name == "postgresql"
    fetched = [n for n in names if not (n == "site" and site is not None)]  # one site: a constant column
    selects = []
    for name in fetched:
        if not name.endswith("_date"):
            selects.append(name)
        elif postgres:
            selects.append(f"({name}::date - DATE '1970-01-01')")
        else:
            selects.append(f"CAST(julianday({name}) - 2440587.5 AS INTEGER)")
    scan = not postgres and site is not None and _site_is_most_of_outcomes(store, site)
    sql = f"SELECT {', '.join(selects)} FROM outcomes{' NOT INDEXED' if scan else ''} WHERE outcome = {mark}"
    params: list[Any] = [outcome]
    if site is not None:
        sql += f" AND site = {mark}"
        params.append(site)
    kinds = {"event": pa.int8(), "competing_event": pa.int8(), "value": pa.float64()}
    types = [pa.int32() if n.endswith("_date") else kinds.get(n, pa.string()) for n in fetched]
    table = _fetch_table(store, sql, params, fetched, types, "reading outcomes")
    if site is not None:
        table = table.add_column(0, "site", pa.repeat(pa.scalar(site, pa.string()), table.num_rows))
    return table


def _site_is_most_of_outcomes(store: CaptureStore, site: str) -> bool:
    """Whether one site holds at least a quarter of the SQLite outcomes table's rows.

    SQLite reads a site's outcomes through the (site, subject, ...) index, so it visits the table
    in subject-key order, a random page per row; when the site is a large share of the table, a
    scan in storage order is cheaper (500,000 of 1,000,000 rows: 1.7 s CPU against 3.6 s). The
    rows' order does not matter: they are grouped per subject. ``max(rowid)`` bounds the count.
    """
    sql_site = "SELECT count(*) FROM outcomes WHERE site = ?"
    ((rows,),) = _fetch_rows(store, sql_site, [site], "counting outcomes")
    ((top,),) = _fetch_rows(store, "SELECT max(rowid) FROM outcomes", [], "counting outcomes")
    return bool(top) and rows * 4 >= top


def outcome_columns(spec: OutcomeSpec) -> tuple[str, ...]:
    """What linking an outcome of this kind reads (a continuous outcome is its value)."""
    if spec.kind == "continuous":
        return ("site", "subject_key", "value")
    return ("site", "subject_key", "event", "event_date", "followup_date", "competing_event", "competing_date")


# ``status`` travels as its index in this tuple (a small integer, not a string per row).
STATUS_CODES = ("ok", "refused", "error", "other")


def _json_number(dialect: str, column: str, mark: str) -> str:
    """SQL for one JSON member as a number (PostgreSQL: NULL unless it is a JSON number)."""
    if dialect == "postgresql":
        return f"CASE WHEN jsonb_typeof({column} -> {mark}) = 'number' THEN ({column} ->> {mark})::float8 END"
    # SQLite: the member as stored (one JSON parse, not two); a stray text is dropped by _array.
    return f"json_extract({column}, {mark})"


def _json_text(dialect: str, column: str, mark: str) -> str:
    """SQL for one JSON member as text (a JSON string's value)."""
    if dialect == "postgresql":
        return f"({column} ->> {mark})"
    return f"CAST(json_extract({column}, {mark}) AS TEXT)"


def outcome_outputs(spec: OutcomeSpec | None) -> list[str]:
    """The outputs an outcome is judged on: each horizon's risk, and the continuous output."""
    if spec is None:
        return []
    return list(dict.fromkeys([h.output for h in spec.horizons] + ([spec.output] if spec.output else [])))


def calls_numbers(
    store: CaptureStore,
    ko_id: str,
    version: str,
    function: FunctionSpec,
    *,
    site: str | None = None,
    since_us: int | None = None,
    ok_only: bool = False,
    with_inputs: bool = True,
) -> pa.Table:
    """The calls monitoring reads, oldest first per site (sites in sorted order), JSON members as columns.

    Columns: ``ts_us``, ``site``, ``subject_key``, ``status`` (index into :data:`STATUS_CODES`),
    ``warned`` (1 when the call carried any warning), ``out:NAME`` per outcome output (double) and,
    with ``with_inputs``, ``in:NAME`` per input with a declared development summary (text for a
    levelled input, else double); members are read for successful calls only (null otherwise).
    ``ok_only`` leaves out the other calls (what recalibration and federation read).

    On SQLite the JSON texts are parsed by Arrow (C++, exact float parsing), one chunk at a time,
    and each site is read through the (KO, version, function, site, time) index, so no column but
    the needed ones reaches Python and nothing is sorted but ties in time; where a text is not one
    JSON object of the expected types, the whole read falls back to extracting the members in SQL
    (``json_extract``), which keeps its rules (a member of another JSON type is absent).
    """
    spec = function.outcome
    outputs = outcome_outputs(spec)
    inputs = [s for s in spec.development if s.name != "linear_predictor"] if spec and with_inputs else []
    if store.engine.dialect.name == "sqlite":
        table = _sqlite_calls(store, ko_id, version, function.name, site, since_us, ok_only, outputs, inputs)
        if table is not None:
            return table
    return _sql_extracted_calls(store, ko_id, version, function.name, site, since_us, ok_only, outputs, inputs)


_STATUS_SQL = "CASE status WHEN 'ok' THEN 0 WHEN 'refused' THEN 1 WHEN 'error' THEN 2 ELSE 3 END"
_WARNED_SQL = "CASE WHEN warnings <> '[]' THEN 1 ELSE 0 END"


def _sqlite_calls(
    store: CaptureStore,
    ko_id: str,
    version: str,
    function: str,
    site: str | None,
    since_us: int | None,
    ok_only: bool,
    outputs: list[str],
    inputs: list[Any],
) -> pa.Table | None:
    """:func:`calls_numbers` on SQLite with Arrow's JSON parser; None where a text needs SQL's rules."""
    out_schema = pa.schema([(n, pa.float64()) for n in outputs])
    in_schema = pa.schema([(s.name, pa.string() if s.levels else pa.float64()) for s in inputs])
    selects = ["ts_us", "subject_key", "0" if ok_only else _STATUS_SQL, _WARNED_SQL]
    for column, schema in (("outputs", out_schema), ("inputs_used", in_schema)):
        if len(schema):  # a failed call's members are not read (they are null in every path)
            selects.append(f"COALESCE(CASE WHEN status = 'ok' THEN {column} END, '{{}}')")
    where = "ko_id = ? AND version = ? AND function = ?"
    params: list[Any] = [ko_id, version, function]
    filters = ""
    if since_us is not None:
        filters += " AND ts_us >= ?"
        params.append(since_us)
    if ok_only:
        filters += " AND status = 'ok'"
    # One site at a time: the index gives time order, so SQLite sorts only calls with equal times;
    # a site holding most of the table is read in storage order and sorted whole (it costs less).
    order = " ORDER BY ts_us, id"
    sql = f"SELECT {', '.join(selects)} FROM calls WHERE {where} AND site = ?{filters}{order}"
    scan_sql = f"SELECT {', '.join(selects)} FROM calls NOT INDEXED WHERE {where} AND site = ?{filters}{order}"
    parts: list[pa.Table] = []
    try:
        with store.engine.connect() as conn, conn.begin():  # one read transaction: one snapshot for all sites
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                if site is None:
                    found = cursor.execute(f"SELECT DISTINCT site FROM calls WHERE {where} ORDER BY site", params[:3])
                    sites = [row[0] for row in found.fetchall()]
                else:
                    sites = [site]
                (top,) = cursor.execute("SELECT max(rowid) FROM calls").fetchone()
                for name in sites:
                    scan = _site_is_most_of_calls(cursor, params[:3], name, top)
                    cursor.execute(scan_sql if scan else sql, (*params[:3], name, *params[3:]))
                    while rows := cursor.fetchmany(READ_CHUNK_ROWS):
                        part = _sqlite_chunk(rows, name, out_schema, in_schema)
                        if part is None:
                            return None
                        parts.append(part)
            finally:
                cursor.close()
    except Exception as exc:
        raise StoreError(f"capture store {store.url}: reading calls failed: {type(exc).__name__}: {exc}") from exc
    if not parts:
        parts.append(_sqlite_chunk([], "", out_schema, in_schema))  # type: ignore[arg-type]
    return pa.concat_tables(parts).combine_chunks()


def _site_is_most_of_calls(cursor: Any, key: list[Any], site: str, top: int | None) -> bool:
    """Whether one (KO, version, function, site) holds at least a quarter of the SQLite calls table.

    Through the index, SQLite visits the table in time order, a page per row wherever the calls
    were not written in time order (imports, merged stores); for a large share of the table a scan
    in storage order and one sort cost less (1,000,000 of 1,000,000 rows written out of time order:
    4.4 s against 2.7 s; written in time order, the two are within noise). The count reads the
    index only; ``top``, the table's ``max(rowid)``, bounds the rows.
    """
    where = "ko_id = ? AND version = ? AND function = ? AND site = ?"
    (rows,) = cursor.execute(f"SELECT count(*) FROM calls WHERE {where}", (*key, site)).fetchone()
    return bool(top) and rows * 4 >= top


def _sqlite_chunk(
    rows: list[tuple[Any, ...]], site: str, out_schema: pa.Schema, in_schema: pa.Schema
) -> pa.Table | None:
    # The rows go to Arrow as they came (tuples into a struct array, converted in C++): no Python
    # transposition into columns, and the JSON texts never become one Python string.
    fields = [("ts_us", pa.int64()), ("subject_key", pa.string()), ("status", pa.int8()), ("warned", pa.int8())]
    texts = [(prefix, schema) for prefix, schema in (("out:", out_schema), ("in:", in_schema)) if len(schema)]
    fields += [(f"{prefix}json", pa.string()) for prefix, _ in texts]
    columns = pa.array(rows, type=pa.struct(fields)).flatten()
    table: dict[str, pa.Array] = {
        "ts_us": columns[0],
        "site": pa.repeat(pa.scalar(site, pa.string()), len(rows)),
        "subject_key": columns[1],
        "status": columns[2],
        "warned": columns[3],
    }
    for at, (prefix, schema) in enumerate(texts, start=4):
        members = json_objects(columns[at], schema)
        if members is None:
            return None
        for name in schema.names:
            table[prefix + name] = members.column(name)
    return pa.table(table)


def json_objects(texts: Sequence[str] | pa.Array, schema: pa.Schema) -> pa.Table | None:
    """The members ``schema`` names of one JSON object per text, parsed by Arrow; None if not so readable.

    None when a text is not a JSON object, a member has another JSON type than ``schema`` says, or
    the texts cannot be laid one per line (a text holding a line break, or an empty or null one):
    the caller then uses a slower reader with its own rules. Floats are parsed exactly (shortest
    round trip).
    """
    column = texts.cast(pa.string()) if isinstance(texts, pa.Array) else pa.array(texts, type=pa.string())
    if len(column) == 0:
        return pa.table({f.name: pa.array([], type=f.type) for f in schema})
    if column.null_count or np.any(np.diff(_offsets(column)) == 0):
        return None
    # Each text followed by a line break: the joined array's data buffer is the NDJSON payload,
    # whose bytes show at once whether some text held a line break of its own.
    lines = pc.binary_join_element_wise(column, "", "\n")
    offsets = _offsets(lines)
    payload = lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    raw = np.frombuffer(payload, dtype=np.uint8)
    if np.count_nonzero(raw == 10) != len(column) or np.any(raw == 13):
        return None
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pajson.read_json(
            pa.BufferReader(payload), read_options=pajson.ReadOptions(block_size=1 << 24), parse_options=options
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(column):
        return None
    return table.select(schema.names).combine_chunks()


def _offsets(strings: pa.Array) -> np.ndarray:
    """A string array's value offsets (int32), without a copy."""
    return np.frombuffer(strings.buffers()[1], dtype=np.int32)[strings.offset : strings.offset + len(strings) + 1]


def _sql_extracted_calls(
    store: CaptureStore,
    ko_id: str,
    version: str,
    function: str,
    site: str | None,
    since_us: int | None,
    ok_only: bool,
    outputs: list[str],
    inputs: list[Any],
) -> pa.Table:
    """:func:`calls_numbers` with the JSON members extracted in SQL (PostgreSQL; SQLite's fallback)."""
    dialect = store.engine.dialect.name
    mark = "?" if store.engine.dialect.paramstyle == "qmark" else "%s"
    json_path = (lambda n: n) if dialect == "postgresql" else (lambda n: f'$."{n}"')
    selects = ["ts_us", "site", "subject_key", _STATUS_SQL, _WARNED_SQL]
    names = ["ts_us", "site", "subject_key", "status", "warned"]
    types: list[pa.DataType] = [pa.int64(), pa.string(), pa.string(), pa.int8(), pa.int8()]
    params: list[Any] = []
    for name in outputs:
        selects.append(_json_number(dialect, "o", mark))
        params.extend([json_path(name)] * (2 if dialect == "postgresql" else 1))
        names.append(f"out:{name}")
        types.append(pa.float64())
    for summary in inputs:
        if summary.levels:
            selects.append(_json_text(dialect, "i", mark))
            params.append(json_path(summary.name))
            types.append(pa.string())
        else:
            selects.append(_json_number(dialect, "i", mark))
            params.extend([json_path(summary.name)] * (2 if dialect == "postgresql" else 1))
            types.append(pa.float64())
        names.append(f"in:{summary.name}")
    cast = "::jsonb" if dialect == "postgresql" else ""
    where = [f"ko_id = {mark}", f"version = {mark}", f"function = {mark}"]
    params.extend([ko_id, version, function])
    if site is not None:
        where.append(f"site = {mark}")
        params.append(site)
    if since_us is not None:
        where.append(f"ts_us >= {mark}")
        params.append(since_us)
    if ok_only:
        where.append("status = 'ok'")
    sql = (
        f"SELECT {', '.join(selects)} FROM (SELECT id, ts_us, site, subject_key, status, warnings, "
        f"CASE WHEN status = 'ok' THEN outputs{cast} END AS o, "
        f"CASE WHEN status = 'ok' THEN inputs_used{cast} END AS i FROM calls WHERE {' AND '.join(where)}) AS c "
        "ORDER BY site, ts_us, id"
    )
    return _fetch_table(store, sql, params, names, types, "reading calls")


def _fetch_table(
    store: CaptureStore, sql: str, params: list[Any], names: list[str], types: list[pa.DataType], what: str
) -> pa.Table:
    """The result of ``sql`` as a table of ``names`` and ``types`` (read through the driver's cursor).

    Not through a second SQLite library (ADBC): two SQLite copies in one process on one file
    release each other's POSIX locks, which the SQLite authors list as a way to corrupt a database.
    Each fetched chunk of rows goes to Arrow as it came (tuples into a struct array, in C++); a
    chunk holding a value of another type goes column by column, where :func:`_array` drops it.
    """
    row_type = pa.struct(list(zip(names, types, strict=True)))
    chunks: list[pa.Table] = []
    try:
        with store.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(sql, tuple(params))
                while part := cursor.fetchmany(65_536):
                    chunks.append(_rows_table(part, row_type, names, types))
            finally:
                cursor.close()
            conn.rollback()
    except Exception as exc:
        raise StoreError(f"capture store {store.url}: {what} failed: {type(exc).__name__}: {exc}") from exc
    if not chunks:
        return pa.table({n: pa.array([], type=t) for n, t in zip(names, types, strict=True)})
    return pa.concat_tables(chunks).combine_chunks()


def _rows_table(rows: list[Any], row_type: pa.StructType, names: list[str], types: list[pa.DataType]) -> pa.Table:
    try:
        return pa.Table.from_struct_array(pa.array(rows, type=row_type))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        columns = list(zip(*rows, strict=True))
        return pa.table({n: _array(list(v), t) for n, v, t in zip(names, columns, types, strict=True)})


def _array(values: list[Any], kind: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a stray value of another JSON type: absent, not a guess
        good = [v if isinstance(v, str if kind == pa.string() else (int, float)) else None for v in values]
        return pa.array(good, type=kind)


def _prefixed(table: pa.Table, prefix: str) -> pa.Table:
    """The columns named ``PREFIX + name`` of ``table``, renamed to ``name``."""
    chosen = [n for n in table.column_names if n.startswith(prefix)]
    return pa.table({n.removeprefix(prefix): table.column(n) for n in chosen})


def parse_json_column(column: pa.ChunkedArray) -> pa.Table:
    """A column of JSON-object text as a table, parsed in C++ (a null or 'null' row is an empty object)."""
    text = pc.if_else(pc.is_null(column), "{}", column)
    text = pc.if_else(pc.equal(text, "null"), "{}", text)
    payload = "\n".join(text.to_pylist()).encode()
    if not payload:
        return pa.table({})
    return pajson.read_json(io.BytesIO(payload), read_options=pajson.ReadOptions(block_size=1 << 26))


def _dates(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Days since the epoch (int) or ISO date text to days (float, NaN where absent)."""
    days = column if pa.types.is_integer(column.type) else pc.cast(pc.cast(column, pa.date32()), pa.int32())
    return pc.fill_null(pc.cast(days, pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def combined_outcomes(table: pa.Table) -> pa.Table:
    """One row per (site, subject): event if any, earliest event date, latest follow-up, ...

    A column the table lacks (not read, see :func:`outcomes_table`) is null in the result.
    """
    wanted = [
        ("event", "max", pa.int8()),
        ("event_date", "min", pa.int32()),
        ("followup_date", "max", pa.int32()),
        ("competing_event", "max", pa.int8()),
        ("competing_date", "min", pa.int32()),
        ("value", "mean", pa.float64()),
    ]
    present = [(n, how) for n, how, _ in wanted if n in table.column_names]
    grouped = table.group_by(["site", "subject_key"]).aggregate(present)
    grouped = grouped.rename_columns(["site", "subject_key", *(n for n, _ in present)])
    columns = {
        n: grouped.column(n) if n in grouped.column_names else pa.nulls(grouped.num_rows, kind) for n, _, kind in wanted
    }
    return pa.table({"site": grouped.column("site"), "subject_key": grouped.column("subject_key"), **columns})


def _volume(ts_us: np.ndarray, status: np.ndarray, warned: np.ndarray) -> list[dict[str, Any]]:
    """Calls per ISO week: total, refused, errors, and those with an out-of-population warning."""
    if ts_us.size == 0:
        return []
    days = ts_us // _DAY_US
    weeks = (days + 3) // 7  # 1970-01-01 was a Thursday: weeks start on Monday
    uniq, inverse = np.unique(weeks, return_inverse=True)
    out = []
    for name, mask in (
        ("calls", np.ones_like(warned)),
        ("refused", status == "refused"),
        ("errors", status == "error"),
        ("warned", warned),
    ):
        counts = np.bincount(inverse, weights=mask.astype(np.float64), minlength=uniq.size)
        out.append((name, counts))
    rows = []
    for i, week in enumerate(uniq):
        start = dt.date(1970, 1, 1) + dt.timedelta(days=int(week * 7 - 3))
        rows.append({"week": start.isoformat(), **{name: int(c[i]) for name, c in out}})
    return rows


def _metrics_json(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Metric):
            out[key] = value.to_json()
        elif isinstance(value, dict):
            out[key] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in value.items()}
        else:
            out[key] = value
    return out


def alerts_of(spec: OutcomeSpec, section: dict[str, Any], site: str, horizon: str | None) -> list[dict[str, Any]]:
    """Declared ranges that a computed metric has left (insufficient data never alerts)."""
    alerts = []
    for rule in spec.ranges:
        metric = section.get(rule.metric)
        if not isinstance(metric, dict) or "value" not in metric:
            continue
        value = metric["value"]
        low = rule.minimum is not None and value < rule.minimum
        high = rule.maximum is not None and value > rule.maximum
        if low or high:
            alerts.append(
                {
                    "site": site,
                    "horizon": horizon,
                    "metric": rule.metric,
                    "value": value,
                    "minimum": rule.minimum,
                    "maximum": rule.maximum,
                    "source": rule.source,
                }
            )
    return alerts


def _linear_predictor(spec: OutcomeSpec | None, outputs: pa.Table, ok: np.ndarray) -> tuple[str, np.ndarray] | None:
    """The linear-predictor scale of the first risk output: cloglog for time-to-event, logit for binary."""
    if spec is None or not spec.horizons or spec.horizons[0].output not in outputs.column_names:
        return None
    p = outputs.column(spec.horizons[0].output).to_numpy(zero_copy_only=False).astype(np.float64)[ok]
    p = np.clip(p[np.isfinite(p)], 1e-12, 1 - 1e-12)
    if spec.kind == "time-to-event":
        return f"cloglog({spec.horizons[0].output})", np.log(-np.log1p(-p))
    return f"logit({spec.horizons[0].output})", np.log(p / (1 - p))


def monitor(
    store: CaptureStore,
    ko_id: str,
    version: str,
    function: FunctionSpec,
    *,
    site: str | None = None,
    since: dt.date | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """The full monitoring report (a JSON-ready dict) of one KO version's function, per site.

    ``workers``: how many sites are computed at once, each in its own process (reading SQLite
    builds a Python object per value under the GIL, so threads barely overlap; processes do).
    None: one per CPU, but only for a SQLite store with several sites and at least
    :data:`PARALLEL_MIN_CALLS` calls (a process costs about 2 s to start); 1: all in this process.
    The report is the same either way.
    """
    since_us = to_us(since) if since is not None else None
    spec = function.outcome
    report = _report_head(ko_id, version, function, site, since)
    split = _parallel_sites(store, ko_id, version, function.name, site, since_us, workers)
    if split is not None:
        sections = _sections_in_processes(store, ko_id, version, function, split, since_us, workers)
        for section in sections:
            report["alerts"].extend(section.pop("_alerts"))
            report["sites"].append(section)
        return report
    # The outcomes are read on a second connection while the calls are read: SQLite and Arrow's
    # parser release the GIL, so on two cores the two reads overlap.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kgrid-outcomes") as pool:
        pending = pool.submit(outcomes_table, store, spec.name, site, outcome_columns(spec)) if spec else None
        calls = calls_numbers(store, ko_id, version, function, site=site, since_us=since_us)
        outcome_rows = combined_outcomes(pending.result()) if pending is not None else None
    if calls.num_rows == 0:
        return report
    sites = sorted(pc.unique(calls.column("site")).to_pylist())
    for name in sites:
        section = _site_section(calls.filter(pc.equal(calls.column("site"), name)), spec, outcome_rows, name)
        report["alerts"].extend(section.pop("_alerts"))
        report["sites"].append(section)
    return report


def _report_head(
    ko_id: str, version: str, function: FunctionSpec, site: str | None, since: dt.date | None
) -> dict[str, Any]:
    spec = function.outcome
    report: dict[str, Any] = {
        "ko": {"id": ko_id, "version": version, "function": function.name, "title": function.title},
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "window": {"since": since.isoformat() if since else None, "site": site},
        "software": {
            "kgrid-py": dist_version("kgrid-py"),
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
            "python": platform.python_version(),
        },
        "outcome": spec.model_dump(mode="json", exclude={"development"}) if spec else None,
        "rules": {
            "index_call": "each subject's first successful call in the window",
            "estimator": (
                None
                if spec is None or spec.kind != "time-to-event"
                else ("aalen-johansen" if spec.competing_event else "kaplan-meier")
            ),
            "minimum_events": 10,
            "competing_events_in_slope_ici_brier_discrimination": "censored (cause-specific)",
        },
        "sites": [],
        "alerts": [],
    }
    return report


PARALLEL_MIN_CALLS = 200_000


def _parallel_sites(
    store: CaptureStore,
    ko_id: str,
    version: str,
    function: str,
    site: str | None,
    since_us: int | None,
    workers: int | None,
) -> list[str] | None:
    """The sites to compute in separate processes, or None to compute them all in this one."""
    if workers is not None and workers < 1:
        raise MonitorError(f"workers must be at least 1, not {workers}")
    if site is not None or workers == 1 or store.engine.dialect.name != "sqlite":
        return None
    sql = "SELECT site, count(*) FROM calls WHERE ko_id = ? AND version = ? AND function = ?"
    params: list[Any] = [ko_id, version, function]
    if since_us is not None:
        sql += " AND ts_us >= ?"
        params.append(since_us)
    counts = dict(_fetch_rows(store, sql + " GROUP BY site", params, "counting calls per site"))
    if len(counts) < 2 or (workers is None and sum(counts.values()) < PARALLEL_MIN_CALLS):
        return None
    return sorted(counts)


def _fetch_rows(store: CaptureStore, sql: str, params: list[Any], what: str) -> list[tuple[Any, ...]]:
    try:
        with store.engine.connect() as conn:
            rows = list(conn.exec_driver_sql(sql, tuple(params)).fetchall())
            conn.rollback()
    except Exception as exc:
        raise StoreError(f"capture store {store.url}: {what} failed: {type(exc).__name__}: {exc}") from exc
    return [tuple(r) for r in rows]


def site_section(
    store: CaptureStore, ko_id: str, version: str, function: FunctionSpec, site: str, since_us: int | None
) -> dict[str, Any] | None:
    """One site's part of :func:`monitor`'s report (None: no call there in the window)."""
    spec = function.outcome
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kgrid-outcomes") as pool:
        pending = pool.submit(outcomes_table, store, spec.name, site, outcome_columns(spec)) if spec else None
        calls = calls_numbers(store, ko_id, version, function, site=site, since_us=since_us)
        outcome_rows = combined_outcomes(pending.result()) if pending is not None else None
    if calls.num_rows == 0:
        return None
    return _site_section(calls, spec, outcome_rows, site)


def _sections_in_processes(
    store: CaptureStore,
    ko_id: str,
    version: str,
    function: FunctionSpec,
    sites: list[str],
    since_us: int | None,
    workers: int | None,
) -> list[dict[str, Any]]:
    """Each site's section from ``python -m kgrid_py.learning.monitor_worker`` (one process per site).

    The last site is computed here meanwhile. Sections travel as JSON (floats as their shortest repr, so exactly).
    """
    url = store.engine.url.render_as_string(hide_password=False)
    workers = max(2, min(workers or os.cpu_count() or 1, len(sites)))

    def child(name: str) -> dict[str, Any] | None:
        payload = {
            "url": url,
            "ko_id": ko_id,
            "version": version,
            "function": function.model_dump(mode="json"),
            "site": name,
            "since_us": since_us,
        }
        try:
            result: dict[str, Any] | None = json.loads(run_worker("kgrid_py.learning.monitor_worker", payload))
        except WorkerFailed as exc:
            raise MonitorError(f"site {name!r}: the monitor worker failed: {exc}") from exc
        return result

    with ThreadPoolExecutor(max_workers=max(1, workers - 1), thread_name_prefix="kgrid-monitor") as pool:
        pending = [pool.submit(child, name) for name in sites[:-1]]
        last = site_section(store, ko_id, version, function, sites[-1], since_us)
        if last is not None:  # the same JSON round trip as the others, so every section has one form
            last = json.loads(json.dumps(last))
        sections = [p.result() for p in pending] + [last]
    return [s for s in sections if s is not None]


def _site_section(calls: pa.Table, spec: OutcomeSpec | None, outcomes: pa.Table | None, site: str) -> dict[str, Any]:
    status = np.asarray(STATUS_CODES)[calls.column("status").to_numpy()]
    warned = calls.column("warned").to_numpy() == 1
    ts_us = calls.column("ts_us").to_numpy()
    ok = status == "ok"
    section: dict[str, Any] = {
        "site": site,
        "calls": int(calls.num_rows),
        "refused": int(np.sum(status == "refused")),
        "errors": int(np.sum(status == "error")),
        "warned": int(warned.sum()),
        "first_call": dt.datetime.fromtimestamp(int(ts_us.min()) / 1e6, dt.UTC).date().isoformat(),
        "last_call": dt.datetime.fromtimestamp(int(ts_us.max()) / 1e6, dt.UTC).date().isoformat(),
        "volume": _volume(ts_us, status, warned),
        "drift": [],
        "performance": [],
        "_alerts": [],
    }
    ok_calls = calls.filter(pa.array(ok))
    outputs = _prefixed(ok_calls, "out:")
    inputs = _prefixed(ok_calls, "in:")
    every = np.ones(ok_calls.num_rows, dtype=bool)
    if spec is not None:
        for summary in spec.development:
            if summary.name == "linear_predictor":
                lp = _linear_predictor(spec, outputs, every)
                if lp is not None:
                    entry = summary_drift(lp[1], summary)
                    entry["scale"] = lp[0]
                    section["drift"].append(entry)
            elif summary.name in inputs.column_names:
                column = inputs.column(summary.name).drop_null()
                if len(column):  # an input no call carried has no drift entry
                    section["drift"].append(summary_drift(column.to_numpy(zero_copy_only=False), summary))
    if spec is None or outcomes is None or ok_calls.num_rows == 0:
        return section
    linked = link_outcomes(ok_calls, outputs, spec, outcomes, site)
    section["linked_subjects"] = linked["n"]
    section["index_calls"] = linked["index_calls"]
    if spec.kind == "continuous":
        pair = linked["value_ok"]
        perf = continuous_metrics(linked["value"][pair], linked["predicted"][spec.output][pair])  # type: ignore[index]
        entry = {"horizon": None, **_metrics_json(perf)}
        section["performance"].append(entry)
        section["_alerts"].extend(alerts_of(spec, entry, site, None))
        return section
    # Ĝ (the censoring distribution) depends only on the times: once per site, not per horizon.
    censoring = censoring_survival(linked["time"], linked["cause"] == 1) if spec.kind == "time-to-event" else None
    for horizon in spec.horizons:
        risk = linked["predicted"][horizon.output]
        if spec.kind == "time-to-event":
            perf = time_to_event_metrics(
                linked["time"],
                linked["cause"],
                risk,
                float(horizon.days),
                competing=spec.competing_event is not None,
                censoring=censoring,
            )
        else:
            time, cause = linked["time"], linked["cause"]
            y = (cause == 1) & (time <= horizon.days)
            known = y | (time >= horizon.days) | (cause == 2)
            perf = binary_metrics(y[known].astype(np.float64), risk[known])
            perf["excluded_incomplete_follow_up"] = int(np.sum(~known))
        entry = {"horizon": horizon.output, "horizon_days": horizon.days, **_metrics_json(perf)}
        section["performance"].append(entry)
        section["_alerts"].extend(alerts_of(spec, entry, site, horizon.output))
    return section


def _first_of_each(codes: np.ndarray) -> np.ndarray:
    """Positions (ascending) where each code first appears.

    Arrow numbers a dictionary in order of first appearance, so a first appearance is a code above
    every code before it (O(n)); for codes numbered otherwise, a stable sort finds them.
    """
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.flatnonzero(codes > np.concatenate([[-1], np.maximum.accumulate(codes)[:-1]]))
    if np.array_equal(codes[first], np.arange(first.size)) and first.size == int(codes.max()) + 1:
        return first
    order = np.argsort(codes, kind="stable")
    return np.sort(order[np.flatnonzero(np.diff(codes[order], prepend=-1))])


def link_outcomes(
    calls: pa.Table, outputs: pa.Table, spec: OutcomeSpec, outcomes: pa.Table, site: str
) -> dict[str, Any]:
    """Index calls joined to their subject's combined outcome: times, causes and predictions as arrays.

    ``calls`` are in time order; ``outcomes`` has one row per (site, subject), as
    :func:`combined_outcomes` makes them. The linked rows come in call order (so every sum, and
    every reported digit, is the same from run to run).
    """
    keys = calls.column("subject_key")
    keyed = np.flatnonzero(pc.is_valid(keys).to_numpy(zero_copy_only=False))
    # First call per subject without a hash group-by and a sort: dictionary encoding numbers the
    # keys in order of first appearance, so a row is its subject's first where its code exceeds
    # every code before it.
    encoded = pc.dictionary_encode(keys.filter(pc.is_valid(keys)).combine_chunks())
    first_rows = keyed[_first_of_each(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64))]
    index_calls = int(first_rows.size)
    site_rows = outcomes.filter(pc.equal(outcomes.column("site"), site))
    found = pc.index_in(keys.take(pa.array(first_rows)), value_set=site_rows.column("subject_key"))
    matched = pc.is_valid(found).to_numpy(zero_copy_only=False)
    rows = first_rows[matched]
    joined = site_rows.take(found.filter(pa.array(matched)))
    call_day = (calls.column("ts_us").to_numpy()[rows] // _DAY_US).astype(np.float64)
    event = pc.fill_null(joined.column("event"), 0).to_numpy(zero_copy_only=False) == 1
    competing = pc.fill_null(joined.column("competing_event"), 0).to_numpy(zero_copy_only=False) == 1
    event_day = _dates(joined.column("event_date")) - call_day
    competing_day = _dates(joined.column("competing_date")) - call_day
    followup_day = _dates(joined.column("followup_date")) - call_day
    t_event = np.where(event, event_day, np.inf)
    t_comp = np.where(competing, competing_day, np.inf)
    t_end = np.where(np.isfinite(followup_day), followup_day, np.fmin(t_event, t_comp))
    time = np.fmin(np.fmin(t_event, t_comp), np.where(event | competing, np.inf, t_end))
    cause = np.where(event & (t_event <= t_comp), 1, np.where(competing, 2, 0))
    usable = np.isfinite(time) & (time >= 0)
    predicted = {}
    names = [h.output for h in spec.horizons] + ([spec.output] if spec.output else [])
    for name in names:
        values = outputs.column(name).to_numpy(zero_copy_only=False).astype(np.float64)[rows]
        predicted[name] = values
        usable &= np.isfinite(values) if spec.kind != "continuous" else usable
    value = joined.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
    value_ok = np.isfinite(value)
    if spec.kind == "continuous":
        value_ok &= np.isfinite(predicted[spec.output])  # type: ignore[index]
    return {
        "n": int(joined.num_rows),
        "index_calls": index_calls,
        "time": time[usable] if spec.kind != "continuous" else time,
        "cause": cause[usable] if spec.kind != "continuous" else cause,
        "call_day": call_day[usable] if spec.kind != "continuous" else call_day,
        "predicted": {k: (v[usable] if spec.kind != "continuous" else v) for k, v in predicted.items()},
        "value": value,
        "value_ok": value_ok,
    }
