"""Captured calls as Parquet: the metadata columns plus one column per input and output.

``inputs_received``, ``inputs_used`` and ``outputs`` are JSON objects in the store; here every key
becomes its own column (``input.age``, ``used.age``, ``output.risk_5y``; nested objects such as a
quantity with its unit flatten to ``input.uacr.value`` and ``input.uacr.unit``), so an analyst
reads them as a table. A column holds float64 where every value is a number, bool where every
value is a boolean, text where every value is text, and otherwise the values' JSON text (mixed
types are never coerced). Two passes over the store: the first finds the columns and their types,
the second writes row groups of ``chunk_rows``; memory is bounded by one chunk either way.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kgrid_py.learning.records import COLUMNS
from kgrid_py.learning.store import READ_CHUNK_ROWS, CaptureStore

__all__ = ["MAX_EXPORT_COLUMNS", "ExportError", "export_parquet", "parse_when"]

MAX_EXPORT_COLUMNS = 10_000
_FLATTENED = {"inputs_received": "input", "inputs_used": "used", "outputs": "output"}
_META = [c for c in COLUMNS if c not in _FLATTENED and c != "warnings"]
_KINDS = {"number": pa.float64(), "bool": pa.bool_(), "text": pa.string(), "json": pa.string()}


class ExportError(ValueError):
    """Raised when an export cannot be written as asked (too many rows or columns)."""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return "json"


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, into)
    elif value is not None:
        into[prefix] = value


def _flat_rows(chunk: pa.Table) -> Iterator[dict[str, Any]]:
    texts = {name: chunk.column(name).to_pylist() for name in _FLATTENED}
    for row in range(chunk.num_rows):
        flat: dict[str, Any] = {}
        for name, prefix in _FLATTENED.items():
            text = texts[name][row]
            if text is not None:
                _flatten(prefix, json.loads(text), flat)
        yield flat


def _array(values: list[Any], kind: str) -> pa.Array:
    if kind == "json":
        values = [None if v is None else json.dumps(v, separators=(",", ":")) for v in values]
    elif kind == "number":
        values = [None if v is None else float(v) for v in values]
    return pa.array(values, type=_KINDS[kind])


def export_parquet(
    store: CaptureStore,
    out: str | os.PathLike[str],
    *,
    ko_id: str | None = None,
    site: str | None = None,
    since: int | dt.datetime | dt.date | None = None,
    until: int | dt.datetime | dt.date | None = None,
    max_rows: int | None = None,
    chunk_rows: int = READ_CHUNK_ROWS,
) -> int:
    """Write the matching calls to ``out`` (replaced only once complete); returns the rows written.

    Without ``until`` the export ends at its own start, so calls made meanwhile are not half-seen.
    """
    if until is None:
        until = dt.datetime.now(dt.UTC)
    filters = {"ko_id": ko_id, "site": site, "since": since, "until": until, "chunk_rows": chunk_rows}
    kinds: dict[str, str] = {}
    rows = 0
    for chunk in store.iter_calls(columns=list(_FLATTENED), **filters):  # type: ignore[arg-type]
        rows += chunk.num_rows
        if max_rows is not None and rows > max_rows:
            raise ExportError(f"more than {max_rows} calls match; narrow the export with --since/--until or --ko")
        for flat in _flat_rows(chunk):
            for key, value in flat.items():
                seen = kinds.get(key)
                kind = _kind(value)
                kinds[key] = kind if seen in (None, kind) else "json"
        if len(kinds) > MAX_EXPORT_COLUMNS:
            raise ExportError(f"the calls have over {MAX_EXPORT_COLUMNS} distinct input/output fields")
    names = sorted(kinds, key=lambda k: (list(_FLATTENED.values()).index(k.split(".", 1)[0]), k))
    meta = [pa.field(n, pa.int64() if n in ("ts_us", "latency_us") else pa.string()) for n in _META]
    schema = pa.schema(
        [
            pa.field("time", pa.timestamp("us", tz="UTC")),
            *meta,
            pa.field("warnings", pa.list_(pa.string())),
            *[pa.field(n, _KINDS[kinds[n]]) for n in names],
        ]
    )
    target = Path(out)
    partial = target.with_name(target.name + ".partial")
    written = 0
    try:
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
            for chunk in store.iter_calls(**filters):  # type: ignore[arg-type]
                flat_rows = list(_flat_rows(chunk))
                columns: dict[str, pa.Array] = {"time": chunk.column("ts_us").cast(pa.timestamp("us", tz="UTC"))}
                columns.update({n: chunk.column(n) for n in _META})
                columns["warnings"] = pa.array(
                    [json.loads(w) for w in chunk.column("warnings").to_pylist()], type=pa.list_(pa.string())
                )
                try:
                    for n in names:
                        columns[n] = _array([r.get(n) for r in flat_rows], kinds[n])
                except (TypeError, ValueError, pa.ArrowException) as exc:
                    raise ExportError(f"the store changed during the export ({exc}); run it again") from None
                writer.write_table(pa.table(columns, schema=schema))
                written += chunk.num_rows
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return written


def parse_when(text: str) -> dt.datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 time with its offset, as an aware UTC datetime."""
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a date (YYYY-MM-DD) or an ISO 8601 time with its offset") from None
    if when.tzinfo is None:
        raise ValueError(f"{text[:40]!r} has no UTC offset; add Z or +hh:mm")
    return when.astimezone(dt.UTC)
