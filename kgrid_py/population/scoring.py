"""Score a whole file through one KO function, streaming pyarrow record batches.

    summary = score_file(ko, "four-variable", "patients.parquet", "scored.parquet", keep=["id"])

Reads CSV (or TSV, optionally gzipped), Parquet or JSON Lines; writes Parquet or CSV. Memory is
bounded by the batch size, not the file size: each batch is scored with one ONNX run while one
thread reads the next batch and another writes the previous one (:mod:`.pipeline`), so at most
about three batches are held at once. The output holds exactly the input's rows, in order: the columns
asked for with ``keep``, then the function's outputs, then ``error`` (null when the row was scored)
and ``warnings`` (inputs outside the intended population). Rows that could not be scored have
null outputs and an ``error``; they never stop the other rows.

The output is written to a temporary file beside it and moved into place with ``os.replace``
only when every row is written, so an interrupted or failed run leaves an existing output as it
was and no partial file behind.

Columns map to inputs by name, or explicitly with ``mapping={"column": "input"}``. A unit for a
column or input (``units={"creatinine": "umol/L"}``) converts its values into the declared unit.
A null cell in an optional input takes the input's default. Columns are resolved as
:meth:`KnowledgeObject.call_batch` resolves them (:mod:`kgrid_py.columns`), and row errors name
the file's columns and units. CSV cells are text: inputs are converted by the KO's types, kept
columns are typed from the whole column (see :class:`_CsvReader`).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kgrid_py.columns import CLI_LABELS, resolve_columns
from kgrid_py.errors import InputError, KgridError
from kgrid_py.ko import KnowledgeObject
from kgrid_py.metadata import FieldSpec, OutputSpec
from kgrid_py.population.pipeline import ReadAhead, WriteBehind

__all__ = [
    "INPUT_FORMATS",
    "OUTPUT_FORMATS",
    "BatchScorer",
    "MappingError",
    "Progress",
    "ScoreSummary",
    "ScoringError",
    "Tally",
    "detect_format",
    "make_progress",
    "parse_pairs",
    "score_file",
]

INPUT_FORMATS = ("csv", "tsv", "parquet", "jsonl")
OUTPUT_FORMATS = ("parquet", "csv")
DEFAULT_BATCH_SIZE = 65_536
# Bounds on what a hostile input file can make a run hold in memory; each refusal names its limit.
# One CSV/JSON Lines row, the header included (a patient row is < 1 KiB). Arrow parses CSV in
# blocks of this size: a row up to it is always read, a longer one is refused where it straddles
# two block boundaries (so never past twice this), which bounds what one row can cost.
MAX_ROW_BYTES = 16 << 20
MAX_COLUMNS = 100_000  # columns in a file's header or schema
MAX_PARQUET_FOOTER_BYTES = 64 << 20  # a Parquet file's metadata, read before anything else
MAX_ROW_GROUP_BYTES = 512 << 20  # the columns read from one Parquet row group, uncompressed
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


class ScoringError(KgridError, ValueError):
    """Raised when a file cannot be scored at all (unreadable input, a type that cannot be written)."""


class MappingError(ScoringError):
    """Raised when ``mapping``, ``units`` or ``keep`` do not fit the input's columns or the function."""


# -- counts and progress ---------------------------------------------------------------------


@dataclass
class Tally:
    """Row counts so far: read, scored, with errors, with warnings."""

    rows_read: int = 0
    rows_scored: int = 0
    rows_with_errors: int = 0
    rows_with_warnings: int = 0

    def add(self, other: Tally) -> None:
        self.rows_read += other.rows_read
        self.rows_scored += other.rows_scored
        self.rows_with_errors += other.rows_with_errors
        self.rows_with_warnings += other.rows_with_warnings


@dataclass(frozen=True)
class ScoreSummary:
    """What a finished run did."""

    tally: Tally
    seconds: float
    output: Path
    batches: int

    @property
    def rows_per_second(self) -> float:
        return self.tally.rows_read / self.seconds if self.seconds > 0 else math.inf

    def lines(self) -> list[str]:
        t = self.tally
        return [
            f"rows read:          {t.rows_read:,}",
            f"rows scored:        {t.rows_scored:,}",
            f"rows with errors:   {t.rows_with_errors:,}",
            f"rows with warnings: {t.rows_with_warnings:,}",
            f"time: {self.seconds:.2f} s ({self.rows_per_second:,.0f} rows/s), {self.batches} batch(es)",
            f"output: {self.output}",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class Progress:
    """Plain progress lines (for logs and pipes): at most one every ``interval`` seconds."""

    def __init__(self, stream: IO[str], interval: float = 5.0) -> None:
        self.stream = stream
        self.interval = interval
        self.started = time.perf_counter()
        self._last = -math.inf

    def update(self, tally: Tally, fraction: float | None) -> None:
        now = time.perf_counter()
        if now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self.started
        rate = tally.rows_read / elapsed if elapsed > 0 else 0.0
        text = f"scored {tally.rows_read:,} rows, {rate:,.0f} rows/s"
        if fraction is not None and 0 < fraction <= 1:
            remaining = elapsed * (1 - fraction) / fraction
            text += f", {fraction:.0%} done, ETA {_duration(remaining)}"
        if tally.rows_with_errors:
            text += f", {tally.rows_with_errors:,} with errors"
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class _BarProgress(Progress):
    """A tqdm bar counting rows; the total is estimated from the share of the input read so far."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream, interval=0.0)
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit=" rows", unit_scale=True, file=stream, dynamic_ncols=True, smoothing=0.1)
        self._shown = 0

    def update(self, tally: Tally, fraction: float | None) -> None:
        if fraction is not None and 0 < fraction <= 1:
            self.bar.total = max(round(tally.rows_read / fraction), tally.rows_read)
        self.bar.update(tally.rows_read - self._shown)
        self._shown = tally.rows_read
        if tally.rows_with_errors:
            self.bar.set_postfix(errors=tally.rows_with_errors, refresh=False)

    def close(self) -> None:
        self.bar.total = self._shown
        self.bar.refresh()
        self.bar.close()


def make_progress(stream: IO[str] | None = None, *, bar: bool | None = None, interval: float = 5.0) -> Progress:
    """A bar when ``stream`` is a terminal (and tqdm is installed), plain lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    if bar is None:
        bar = bool(getattr(stream, "isatty", lambda: False)())
    if bar:
        try:
            return _BarProgress(stream)
        except ImportError:
            pass
    return Progress(stream, interval)


def _duration(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


# -- options ---------------------------------------------------------------------------------


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """``["a=b", ...]`` as a dict; a malformed or repeated key is a :class:`MappingError`."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise MappingError(f"{what} {item!r}: expected NAME=VALUE")
        if key in pairs:
            raise MappingError(f"{what} {key!r} is given twice")
        pairs[key] = value
    return pairs


def detect_format(path: str | os.PathLike[str], allowed: Sequence[str]) -> str:
    """The file format from the suffix (``.csv``, ``.tsv``, ``.parquet``, ``.jsonl``; ``.gz`` allowed)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None or fmt not in allowed:
        raise MappingError(f"{path}: cannot tell the format from its name; use one of {', '.join(allowed)}")
    return fmt


# -- one batch -------------------------------------------------------------------------------


class BatchScorer:
    """Scores record batches of a fixed input schema into record batches of :attr:`output_schema`.

    Resolves ``mapping``, ``units`` and ``keep`` against the input columns once, then each
    :meth:`score` is one ``call_batch``. Raises :class:`MappingError` when they do not fit.
    """

    def __init__(
        self,
        ko: KnowledgeObject,
        function: str,
        schema: pa.Schema,
        *,
        mapping: Mapping[str, str] | None = None,
        units: Mapping[str, str] | None = None,
        keep: Sequence[str] = (),
        warnings_as_text: bool = False,
        subject: str | None = None,
    ) -> None:
        self.ko = ko
        self.function = function
        # subject: a patient-id column handed to the KO's recorder (keyed by capture), never output.
        if subject is not None and subject not in schema.names:
            raise MappingError(f"--subject column {subject!r} is not in the input (columns: {', '.join(schema.names)})")
        self.subject = subject
        spec = ko.function(function)
        self.inputs: dict[str, FieldSpec] = {f.name: f for f in spec.inputs}
        self.outputs: list[OutputSpec] = list(spec.outputs)
        self.warnings_as_text = warnings_as_text
        try:
            resolved = resolve_columns(spec, schema.names, mapping=mapping, units=units, keep=keep, labels=CLI_LABELS)
        except InputError as exc:
            problems = (e.message if e.field == "(table)" else f"input {e.field} {e.message}" for e in exc.errors)
            raise MappingError(f"{ko.ref} {function}: " + "; ".join(problems)) from None
        self.column_for = resolved.column_for
        self.units = resolved.units
        self.keep = resolved.keep
        # call_batch sees the file's own column names, so row errors name them (and their units).
        self.mapping = {column: name for name, column in self.column_for.items()}
        self.defaults: dict[str, Any] = {}  # key -> whole-array default (the library's are lists)
        for name, f in self.inputs.items():
            if name not in self.column_for and f.default is not None and f.type != "tensor":
                key = name
                while key in schema.names:  # a column of that name exists but feeds another input
                    key = f"_{key}"
                self.mapping[key] = name
                self.defaults[key] = float(f.default) if f.type in ("number", "integer") else f.default
        self.needed = list(dict.fromkeys([*self.keep, *self.column_for.values(), *([subject] if subject else [])]))
        self.input_schema = schema
        self.keep_types: dict[str, pa.DataType] = {}
        self.null_text: pa.Array | None = None
        self.output_schema = self._output_schema()
        # Let the library reject anything else (units it cannot convert) before a row is read.
        try:
            ko.call_batch(function, {key: [] for key in self.mapping}, mapping=self.mapping, units=self.units)
        except InputError as exc:
            raise MappingError(f"{ko.ref} {function}: {exc}") from None

    def read_text(self, keep_types: Mapping[str, pa.DataType], null_text: Sequence[str]) -> None:
        """For a text source (CSV): write kept columns as ``keep_types``; ``null_text`` cells of inputs are missing."""
        self.keep_types = {name: keep_types[name] for name in self.keep if name in keep_types}
        self.null_text = pa.array(list(null_text), type=pa.string()) if null_text else None
        self.output_schema = self._output_schema()

    def _output_schema(self) -> pa.Schema:
        fields = [self.input_schema.field(name) for name in self.keep]
        fields = [f.with_type(self.keep_types[f.name]) if f.name in self.keep_types else f for f in fields]
        for out in self.outputs:
            fields.append(pa.field(out.name, _output_type(out)))
        fields.append(pa.field("error", pa.string()))
        fields.append(pa.field("warnings", pa.string() if self.warnings_as_text else pa.list_(pa.string())))
        return pa.schema(fields)

    def score(self, batch: pa.RecordBatch | pa.Table, row_errors: Sequence[str | None] | None = None) -> pa.RecordBatch:
        """Score one batch; ``row_errors`` marks rows the reader already knows are broken."""
        columns = {col: self._input_column(name, batch.column(col)) for name, col in self.column_for.items()}
        for key, value in self.defaults.items():
            columns[key] = np.full(batch.num_rows, value)
        subjects = batch.column(self.subject).to_pylist() if self.subject else None
        result = self.ko.call_batch(self.function, columns, mapping=self.mapping, units=self.units, subjects=subjects)
        errors = list(result.errors)
        if row_errors is not None:
            for row, message in enumerate(row_errors):
                if message is not None:
                    errors[row] = message
        error_array = pa.array(errors, type=pa.string())
        failed = error_array.is_valid().to_numpy(zero_copy_only=False)
        arrays: list[pa.Array] = []
        for name in self.keep:
            kept = _as_array(batch.column(name))
            arrays.append(kept.cast(self.keep_types[name]) if name in self.keep_types else kept)
        for out in self.outputs:
            arrays.append(_output_array(out, result[out.name], failed))
        arrays.append(error_array)
        warnings = result.warnings
        if self.warnings_as_text:
            arrays.append(pa.array([("; ".join(w) if w else None) for w in warnings], type=pa.string()))
        else:
            arrays.append(pa.array(warnings, type=pa.list_(pa.string())))
        return pa.RecordBatch.from_arrays(arrays, schema=self.output_schema)

    @staticmethod
    def tally(scored: pa.RecordBatch) -> Tally:
        """Counts for a batch :meth:`score` returned."""
        n = scored.num_rows
        ok = scored.column("error").null_count
        warnings = scored.column("warnings")
        if pa.types.is_string(warnings.type):
            with_warnings = n - warnings.null_count
        else:
            with_warnings = int(pc.sum(pc.greater(pc.list_value_length(warnings), 0)).as_py() or 0)
        return Tally(n, ok, n - ok, with_warnings)

    def _input_column(self, name: str, column: pa.Array | pa.ChunkedArray) -> Any:
        """An arrow column as call_batch wants it: float arrays for numbers, labels, booleans."""
        spec = self.inputs[name]
        column = _as_array(column)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if self.null_text is not None and pa.types.is_string(column.type):
            column = pc.if_else(pc.is_in(column, value_set=self.null_text), pa.scalar(None, pa.string()), column)
        kind = spec.type
        if kind in ("number", "integer"):
            values = _numbers(column)
            if values is not None and spec.default is not None and not spec.required:
                values = np.where(np.isnan(values), float(spec.default), values)
            return values if values is not None else [_number_or_raw(v) for v in column.to_pylist()]
        if kind == "boolean":
            return _booleans(column)
        if kind == "enum" and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            return column
        return column.to_pylist()


def _as_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def _numbers(column: pa.Array) -> np.ndarray | None:
    """float64 values (null -> NaN), or None when some cells are not numbers (each gets its own error)."""
    t = column.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_null(t):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            return pc.cast(pc.utf8_trim_whitespace(column), pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
    return None


def _number_or_raw(value: Any) -> Any:
    """A text cell as a float when it reads as one; otherwise as it was, for its row's error."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _booleans(column: pa.Array) -> Any:
    """Booleans (a bool array when complete, else a list with None); 0/1 and true/false text accepted."""
    t = column.type
    if pa.types.is_boolean(t):
        values = column
    elif pa.types.is_integer(t):
        values = pc.if_else(pc.is_in(column, pa.array([0, 1], t)), pc.not_equal(column, 0), None)
        if values.null_count > column.null_count:  # other numbers: let each row say what is wrong
            return column.to_pylist()
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(column))
        truthy = pc.is_in(lowered, pa.array(sorted(_TRUE)))
        falsy = pc.is_in(lowered, pa.array(sorted(_FALSE)))
        known = pc.or_(truthy, falsy)
        if not pc.all(pc.or_(known, pc.is_null(column))).as_py():
            raw = column.to_pylist()
            return [
                (v.strip().lower() in _TRUE) if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE else v
                for v in raw
            ]
        values = pc.if_else(pc.is_null(column), None, truthy)
    else:
        return column.to_pylist()
    if values.null_count == 0:
        return values.to_numpy(zero_copy_only=False)
    return values.to_pylist()


def _output_type(spec: OutputSpec) -> pa.DataType:
    if spec.type == "number":
        return pa.float64()
    if spec.type == "integer":
        return pa.int64()
    if spec.type == "boolean":
        return pa.bool_()
    if spec.type == "enum":
        return pa.string()
    size = int(np.prod(spec.shape or (1,)))
    return pa.list_(pa.float64(), size)


def _output_array(spec: OutputSpec, values: np.ndarray, failed: np.ndarray) -> pa.Array:
    """An output column; rows that failed are null (not NaN)."""
    kind = spec.type
    if kind == "number":
        return pa.array(values, type=pa.float64(), mask=failed)
    if kind == "tensor":
        size = int(np.prod(spec.shape or (1,)))
        flat = pa.array(np.asarray(values, dtype=np.float64).reshape(-1), type=pa.float64())
        return pa.FixedSizeListArray.from_arrays(flat, size, mask=pa.array(failed))
    return pa.array(values, type=_output_type(spec), mask=failed)


# -- reading ---------------------------------------------------------------------------------


class _CountingFile(io.RawIOBase):
    """A read-only file that knows how far it has been read (for progress on CSV and JSONL)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.size = os.fstat(self._file.fileno()).st_size
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._file.readinto(buffer)
        self.position += n or 0
        return n or 0

    def close(self) -> None:
        self._file.close()
        super().close()

    @property
    def fraction(self) -> float | None:
        return self.position / self.size if self.size else None


class _Reader:
    """An input file opened for streaming: its column names, then batches of the columns needed."""

    columns: list[str]
    schema: pa.Schema
    text = False  # a text source (CSV): every cell is read as a string

    def keep_types(self, names: list[str]) -> dict[str, pa.DataType]:
        """Types for kept columns of a text source (see :func:`_text_type`); none for typed sources."""
        return {}

    def batches(self, needed: list[str]) -> Iterator[tuple[pa.RecordBatch, list[str | None] | None]]:
        raise NotImplementedError

    def fraction(self) -> float | None:
        return None

    def close(self) -> None:
        pass


class _ParquetReader(_Reader):
    def __init__(self, path: Path, batch_size: int) -> None:
        self.path = path
        footer = _parquet_footer_size(path)
        if footer > MAX_PARQUET_FOOTER_BYTES:
            raise ScoringError(
                f"{path}: its Parquet metadata is {footer:,} bytes, over the {_mib(MAX_PARQUET_FOOTER_BYTES)} limit"
            )
        # pre_buffer would read ahead every row group it is asked for, i.e. the whole file.
        self.file = pq.ParquetFile(path, pre_buffer=False)
        width = self.file.metadata.num_columns
        if width > MAX_COLUMNS:
            self.file.close()
            raise ScoringError(f"{path}: {width:,} columns, over the limit of {MAX_COLUMNS:,}")
        self.schema = self.file.schema_arrow
        self.columns = list(self.schema.names)
        self.batch_size = batch_size
        self.total = self.file.metadata.num_rows
        self.done = 0

    def batches(self, needed: list[str]) -> Iterator[tuple[pa.RecordBatch, list[str | None] | None]]:
        self._check_row_groups(needed)
        for batch in self.file.iter_batches(batch_size=self.batch_size, columns=needed, use_threads=True):
            self.done += batch.num_rows
            yield batch, None

    def _check_row_groups(self, needed: list[str]) -> None:
        """Refuse, before reading, a row group whose needed columns (a huge string, say) would not fit the bound."""
        meta = self.file.metadata
        wanted = set(needed)
        leaves = [i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] in wanted]
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            size = sum(group.column(i).total_uncompressed_size for i in leaves)
            if size > MAX_ROW_GROUP_BYTES:
                raise ScoringError(
                    f"{self.path}: row group {g} holds {size:,} bytes of the columns read, over the "
                    f"{_mib(MAX_ROW_GROUP_BYTES)} limit; write the file with smaller row groups"
                )

    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None

    def close(self) -> None:
        self.file.close()


def _parquet_footer_size(path: Path) -> int:
    """The length of a Parquet file's metadata, from its last 8 bytes, read before parsing it."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 12:
            raise ScoringError(f"{path}: too short to be a Parquet file")
        f.seek(-8, os.SEEK_END)
        tail = f.read(8)
    if tail[4:] != b"PAR1":
        raise ScoringError(f"{path}: not a Parquet file (no PAR1 footer)")
    return int.from_bytes(tail[:4], "little")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


class _CsvReader(_Reader):
    """Every column is read as text, so a stray value fails its row, not the file.

    Scored inputs are converted by the KO's declared types, row by row; in them the usual
    missing-value spellings (``NA``, ``NULL``, ``NaN``, ``#N/A``, ...: :data:`CSV_NULLS`) are
    missing. Kept columns are typed by :meth:`keep_types` from the whole column, and in them only
    an empty cell is missing (an id ``NA`` stays the text ``NA``).
    """

    text = True

    def __init__(self, path: Path, batch_size: int, delimiter: str) -> None:
        self.path = path
        self.delimiter = delimiter
        self.batch_size = batch_size
        self.raw: _CountingFile | None = None
        self.done = 0
        self.estimated_rows: int | None = None
        self._check_header()
        with self._stream() as stream:
            header = pacsv.open_csv(stream, read_options=self._read_options(), parse_options=self._parse_options())
            self.columns = list(header.schema.names)
        self.schema = pa.schema([pa.field(name, pa.string()) for name in self.columns])

    def _parse_options(self) -> pacsv.ParseOptions:
        return pacsv.ParseOptions(delimiter=self.delimiter)

    def _read_options(self) -> pacsv.ReadOptions:
        # Arrow needs each row inside one block: the block size is the bound on a row's length.
        return pacsv.ReadOptions(block_size=MAX_ROW_BYTES)

    def _check_header(self) -> None:
        """Refuse an over-long or over-wide header before Arrow builds a schema from it."""
        opener = gzip.open if self.path.suffix.lower() == ".gz" else open
        with opener(self.path, "rb") as f:
            head = f.read(MAX_ROW_BYTES + 1)
        end = head.find(b"\n")
        if end < 0 and len(head) > MAX_ROW_BYTES:
            raise ScoringError(f"{self.path}: the header row is longer than {_mib(MAX_ROW_BYTES)}")
        header = head if end < 0 else head[:end]
        if header.count(self.delimiter.encode()) + 1 > MAX_COLUMNS:
            raise ScoringError(f"{self.path}: the header has more than {MAX_COLUMNS:,} columns")

    def _arrow_error(self, exc: pa.ArrowInvalid) -> ScoringError:
        if "straddling" in str(exc):  # Arrow's words for a row that does not fit in one block
            return ScoringError(f"{self.path}: a row is longer than {_mib(MAX_ROW_BYTES)}; refused to bound memory")
        return ScoringError(f"{self.path}: {exc}")

    def _stream(self) -> Any:
        self.raw = _CountingFile(self.path)
        source = pa.PythonFile(self.raw, mode="r")
        if self.path.suffix.lower() == ".gz":
            return pa.CompressedInputStream(source, "gzip")
        return source

    def batches(self, needed: list[str]) -> Iterator[tuple[pa.RecordBatch, list[str | None] | None]]:
        stream = self._stream()
        # Aim for batch_size rows per block: estimate bytes per row from the file's start.
        per_row = self._bytes_per_row()
        # Arrow reads blocks ahead, so bytes read say little about rows done: estimate the rows.
        if self.path.suffix.lower() != ".gz" and self.raw is not None:
            self.estimated_rows = max(self.raw.size // per_row, 1)
        reader = pacsv.open_csv(
            stream,
            read_options=self._read_options(),
            parse_options=self._parse_options(),
            convert_options=self._text_options(needed),
        )
        try:
            for batch in reader:
                for start in range(0, batch.num_rows, self.batch_size):
                    piece = batch.slice(start, self.batch_size)
                    self.done += piece.num_rows
                    yield piece, None
        except pa.ArrowInvalid as exc:
            raise self._arrow_error(exc) from None
        finally:
            stream.close()

    def _text_options(self, names: list[str]) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(
            include_columns=names,
            column_types={name: pa.string() for name in names},
            null_values=[""],
            strings_can_be_null=True,
        )

    def keep_types(self, names: list[str]) -> dict[str, pa.DataType]:
        """One pass over the kept columns alone (streaming, bounded memory) to type each as a whole."""
        if not names:
            return {}
        state = {name: _TextType() for name in names}
        stream = self._stream()
        try:
            options = self._text_options(names)
            batches = pacsv.open_csv(
                stream, read_options=self._read_options(), parse_options=self._parse_options(), convert_options=options
            )
            for batch in batches:
                for name, kind in state.items():
                    kind.update(batch.column(name))
        except pa.ArrowInvalid as exc:
            raise self._arrow_error(exc) from None
        finally:
            stream.close()
        return {name: kind.type() for name, kind in state.items()}

    def _bytes_per_row(self) -> int:
        opener = gzip.open if self.path.suffix.lower() == ".gz" else open
        with opener(self.path, "rb") as f:
            sample = f.read(1 << 20)
        lines = sample.count(b"\n")
        return max(len(sample) // max(lines, 1), 1)

    def fraction(self) -> float | None:
        if self.estimated_rows is None:
            return None
        return min(self.done / self.estimated_rows, 0.99)


CSV_NULLS = tuple(v for v in pacsv.ConvertOptions().null_values if v)  # Arrow's own list, less ""
_INTEGER_TEXT = r"^(0|-?[1-9][0-9]*)$"  # no sign on 0, no leading zeros: "007" is a label
_DECIMAL_TEXT = r"^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?([eE][-+]?[0-9]+)?$"  # no trailing zeros either
_MAX_EXACT_DIGITS = 15  # a decimal of at most 15 significant digits survives float64 exactly


@dataclass
class _TextType:
    """What every non-empty cell of a kept text column seen so far could be; see :meth:`type`."""

    integer: bool = True
    decimal: bool = True
    seen: bool = False

    def update(self, column: pa.Array) -> None:
        cells = column.drop_null()
        if len(cells) == 0:
            return
        self.seen = True
        if self.integer:
            self.integer = bool(pc.all(pc.match_substring_regex(cells, _INTEGER_TEXT)).as_py())
            if self.integer:
                try:
                    cells.cast(pa.int64())
                except pa.ArrowInvalid:  # beyond int64
                    self.integer = False
        if self.decimal:
            self.decimal = bool(pc.all(pc.match_substring_regex(cells, _DECIMAL_TEXT)).as_py())
            if self.decimal:
                digits = pc.utf8_length(pc.utf8_trim(pc.replace_substring_regex(cells, r"[eE].*$|[-.]", ""), "0"))
                self.decimal = pc.max(digits).as_py() <= _MAX_EXACT_DIGITS

    def type(self) -> pa.DataType:
        """int64 if every cell is written as an integer (``"007"`` is not: its zeros would be lost)
        and fits; float64 if every cell is a plain decimal float64 holds exactly; else the text."""
        if self.seen and self.integer:
            return pa.int64()
        if self.seen and self.decimal:
            return pa.float64()
        return pa.string()


class _JsonLinesReader(_Reader):
    """One JSON object per line; a line that is not one becomes a row with an error, not a failure.

    Column names are the keys of the first batch's lines. A kept column's type is fixed by the
    first batch; input columns with mixed JSON types fall back to text (each bad cell then gets
    its own error).
    """

    def __init__(self, path: Path, batch_size: int) -> None:
        self.path = path
        self.batch_size = batch_size
        self.raw = _CountingFile(path)
        self.text = io.TextIOWrapper(
            gzip.GzipFile(fileobj=self.raw) if path.suffix.lower() == ".gz" else io.BufferedReader(self.raw),
            encoding="utf-8",
        )
        self.line_number = 0
        self.first = self._read_lines()
        keys: dict[str, None] = {}
        for row in self.first[0]:
            if row is not None:
                keys.update(dict.fromkeys(row))
                if len(keys) > MAX_COLUMNS:
                    raise ScoringError(f"{path}: more than {MAX_COLUMNS:,} distinct fields in the first rows")
        self.columns = list(keys)
        self.types: dict[str, pa.DataType] = {}
        self.schema = pa.schema([pa.field(name, self._first_type(name)) for name in self.columns])

    def _first_type(self, name: str) -> pa.DataType:
        values = [row.get(name) if row else None for row in self.first[0]]
        try:
            t = pa.array(values).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            t = pa.string()
        if pa.types.is_null(t):
            t = pa.string()
        self.types[name] = t
        return t

    def _read_lines(self) -> tuple[list[dict[str, Any] | None], list[str | None]]:
        rows: list[dict[str, Any] | None] = []
        problems: list[str | None] = []
        while line := self.text.readline(MAX_ROW_BYTES + 1):
            self.line_number += 1
            if len(line) > MAX_ROW_BYTES and not line.endswith("\n"):
                while (rest := self.text.readline(MAX_ROW_BYTES)) and not rest.endswith("\n"):
                    pass  # skip the rest of the line a chunk at a time: memory stays bounded
                row, problem = None, f"line {self.line_number}: longer than {_mib(MAX_ROW_BYTES)}"
            elif not line.strip():
                continue
            else:
                row, problem = _json_row(line, self.line_number)
            rows.append(row)
            problems.append(problem)
            if len(rows) >= self.batch_size:
                break
        return rows, problems

    def batches(self, needed: list[str]) -> Iterator[tuple[pa.RecordBatch, list[str | None] | None]]:
        chunk = self.first
        while chunk[0]:
            rows, problems = chunk
            arrays = [self._column(name, [row.get(name) if row else None for row in rows]) for name in needed]
            batch = pa.RecordBatch.from_arrays(arrays, names=needed)
            yield batch, (problems if any(p is not None for p in problems) else None)
            chunk = self._read_lines()

    def _column(self, name: str, values: list[Any]) -> pa.Array:
        t = self.types.get(name, pa.string())
        try:
            return pa.array(values, type=t)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            if t != pa.string():
                raise ScoringError(
                    f"{self.path}: column {name!r} changed type after line {self.line_number - len(values)} "
                    f"(it started as {t})"
                ) from None
            return pa.array([_text(v) for v in values], type=pa.string())

    def fraction(self) -> float | None:
        return self.raw.fraction

    def close(self) -> None:
        self.text.close()


def _json_row(line: str, number: int) -> tuple[dict[str, Any] | None, str | None]:
    """One JSON Lines row, or the reason it is not one (never an exception: a bad line is a bad row)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"line {number}: not valid JSON ({exc.msg})"
    except (ValueError, RecursionError) as exc:  # a 5,000-digit integer; nesting deeper than Python's stack
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        return None, f"line {number}: not usable JSON ({reason})"
    if not isinstance(row, dict):
        return None, f"line {number}: not a JSON object"
    if len(row) > MAX_COLUMNS:
        return None, f"line {number}: more than {MAX_COLUMNS:,} fields"
    return row, None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _open_reader(path: Path, fmt: str, batch_size: int) -> _Reader:
    try:
        if fmt == "parquet":
            return _ParquetReader(path, batch_size)
        if fmt in ("csv", "tsv"):
            return _CsvReader(path, batch_size, "\t" if fmt == "tsv" else ",")
        return _JsonLinesReader(path, batch_size)
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ScoringError(f"{path}: cannot read it as {fmt}: {exc}") from None


# -- writing ---------------------------------------------------------------------------------


class _Writer:
    """Writes batches to a temporary file beside ``path``; :meth:`commit` moves it into place."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema) -> None:
        self.path = path
        directory = path.parent if str(path.parent) else Path(".")
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)
        os.close(fd)
        self.temp = Path(name)
        try:
            if fmt == "parquet":
                self._writer: Any = pq.ParquetWriter(self.temp, schema, compression="snappy")
            else:
                self._writer = pacsv.CSVWriter(self.temp, schema)
        except BaseException:
            self.temp.unlink(missing_ok=True)
            raise

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def commit(self) -> None:
        self._writer.close()
        with open(self.temp, "rb") as f:
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.temp, 0o666 & ~mask)  # mkstemp made it private; give it the usual mode
        os.replace(self.temp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        self.temp.unlink(missing_ok=True)


# -- a whole file ----------------------------------------------------------------------------


@dataclass
class _Run:
    tally: Tally = field(default_factory=Tally)
    batches: int = 0


def score_file(
    ko: KnowledgeObject,
    function: str,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    mapping: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    keep: Sequence[str] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    input_format: str | None = None,
    output_format: str | None = None,
    progress: Progress | None = None,
    on_batch: Callable[[Tally], None] | None = None,
    subject: str | None = None,
) -> ScoreSummary:
    """Score every row of ``input_path`` into ``output_path``; see the module docstring.

    ``on_batch`` is called with the running counts after each batch is written. Raises
    :class:`MappingError` when the columns do not fit the function and :class:`ScoringError`
    when the input cannot be read; the output is then left as it was.
    """
    source, target = Path(input_path), Path(output_path)
    if batch_size < 1:
        raise ScoringError(f"batch size must be at least 1, got {batch_size}")
    in_fmt = input_format or detect_format(source, INPUT_FORMATS)
    out_fmt = output_format or detect_format(target, OUTPUT_FORMATS)
    if in_fmt not in INPUT_FORMATS or out_fmt not in OUTPUT_FORMATS:
        raise MappingError(f"formats: input one of {INPUT_FORMATS}, output one of {OUTPUT_FORMATS}")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise MappingError(f"the output {target} is the input; write somewhere else")
    started = time.perf_counter()
    reader = _open_reader(source, in_fmt, batch_size)
    run = _Run()
    try:
        scorer = BatchScorer(
            ko,
            function,
            reader.schema,
            mapping=mapping,
            units=units,
            keep=keep,
            warnings_as_text=out_fmt == "csv",
            subject=subject,
        )
        if out_fmt == "csv" and any(o.type == "tensor" for o in scorer.outputs):
            raise MappingError(f"{ko.ref} {function} has tensor outputs; write Parquet, not CSV")
        if reader.text:
            scorer.read_text(reader.keep_types(scorer.keep), CSV_NULLS)
        writer = _Writer(target, out_fmt, scorer.output_schema)
        try:
            _stream(reader, scorer, writer, run, progress, on_batch)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    finally:
        reader.close()
        if progress is not None:
            progress.close()
    return ScoreSummary(run.tally, time.perf_counter() - started, target, run.batches)


def _stream(
    reader: _Reader,
    scorer: BatchScorer,
    writer: _Writer,
    run: _Run,
    progress: Progress | None,
    on_batch: Callable[[Tally], None] | None,
) -> None:
    """Read batch k+1 and write batch k-1 on their own threads while batch k is scored.

    Output order is input order. Counts, progress and ``on_batch`` follow what is written. Both
    threads are joined before this returns or raises, so the caller may then remove the file.
    """

    def read() -> Iterator[tuple[pa.RecordBatch, list[str | None] | None, float | None]]:
        for batch, row_errors in reader.batches(scorer.needed):
            yield batch, row_errors, reader.fraction()

    def report(written: list[tuple[Tally, float | None]]) -> None:
        for tally, fraction in written:
            run.tally.add(tally)
            run.batches += 1
            if progress is not None:
                progress.update(run.tally, fraction)
            if on_batch is not None:
                on_batch(run.tally)

    with ReadAhead(read()) as batches, WriteBehind(writer.write) as behind:
        for batch, row_errors, fraction in batches:
            scored = scorer.score(batch, row_errors)
            del batch, row_errors
            behind.put(scored, (BatchScorer.tally(scored), fraction))
            del scored
            report(behind.written())
        report(behind.finish())
