"""A loaded knowledge object: verified files, ONNX sessions, and functions you can call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import ValidationError

from kgrid_py.columns import CallerTerms, ColumnPlan, resolve_columns
from kgrid_py.digest import folder_identity, sha256_file
from kgrid_py.errors import FieldError, InputError, IntegrityError, InvalidKO, NotFound
from kgrid_py.inputs import MODEL_WARNING_FIELD, FunctionPlan, InputWarning
from kgrid_py.metadata import FieldSpec, FunctionSpec, KOMetadata, OutputSpec
from kgrid_py.plausibility import OutputChecks
from kgrid_py.runtime import ModelSession, RuntimeSettings, get_session
from kgrid_py.schema import validate_raw_metadata
from kgrid_py.vectors import VectorOutcome, load_vectors, run_vectors

__all__ = ["BatchResult", "CallEvent", "CallResult", "KnowledgeObject", "Provenance", "Recorder"]

METADATA_FILE = "metadata.json"
MODEL_SUFFIXES = (".onnx", ".ort")


@dataclass(frozen=True)
class Provenance:
    """What computed a result: enough to reproduce it or to audit it later."""

    ko_id: str
    version: str
    content_digest: str
    model_digest: str
    function: str

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.ko_id,
            "version": self.version,
            "content_digest": self.content_digest,
            "model_digest": self.model_digest,
            "function": self.function,
        }


@dataclass(frozen=True)
class CallResult:
    """The answer for one patient: outputs, warnings about the inputs, and provenance."""

    result: dict[str, Any]
    warning_details: list[InputWarning]
    provenance: Provenance

    @property
    def warnings(self) -> list[str]:
        return [str(w) for w in self.warning_details]

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.result, "warnings": self.warnings, "provenance": self.provenance.as_dict()}


@dataclass
class BatchResult(Mapping[str, np.ndarray]):
    """Outputs for a table, row for row: a mapping of output columns plus errors and warnings.

    Rows that could not be scored hold NaN (numbers) or None (labels) and have an ``errors`` entry;
    ``warnings`` holds a tuple of messages per row (empty for most). ``kept`` holds the columns
    ``call_batch(..., keep=[...])`` carried through, as they were given.
    """

    columns: dict[str, np.ndarray]
    errors: list[str | None]
    warnings: list[tuple[str, ...]]
    provenance: Provenance
    kept: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.columns[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def n_rows(self) -> int:
        return len(self.errors)

    def to_arrow(self) -> pa.Table:
        """The kept columns, the outputs, ``error`` and ``warnings``: the layout ``kgrid score`` writes."""
        data: dict[str, Any] = {name: _arrow_column(col) for name, col in self.kept.items()}
        data.update((name, pa.array(col)) for name, col in self.columns.items())
        data["error"] = pa.array(self.errors, type=pa.string())
        data["warnings"] = pa.array(self.warnings, type=pa.list_(pa.string()))
        return pa.table(data)

    def to_pandas(self) -> Any:
        return self.to_arrow().to_pandas()


@dataclass(frozen=True, slots=True)
class CallEvent:
    """What a recorder is told after each ``call``/``call_batch``, refused and failed calls included.

    The core only reports; what is kept, and where, is the recorder's business
    (:mod:`kgrid_py.learning.capture`). ``used`` is what the model was fed, by input name, after unit
    conversion (labels as their codes): one value per input for ``call``; for ``call_batch``, arrays
    over the rows ``valid`` marks. ``subject`` is the caller's patient id(s), as given, for the
    recorder to key; it is never part of a result.
    """

    provenance: Provenance
    inputs: Any  # the mapping (call) or the table's fed columns by input name (call_batch)
    used: Mapping[str, Any] | None
    result: CallResult | BatchResult | None
    status: str  # ok | refused | error
    error: str | None
    started_ns: int  # UTC epoch nanoseconds
    latency_ns: int
    subject: Any = None
    valid: np.ndarray | None = None
    batch: bool = False


Recorder = Callable[[CallEvent], None]


class _Function:
    """A declared function bound to its ONNX session and compiled input plan."""

    def __init__(
        self, spec: FunctionSpec, session: ModelSession, provenance: Provenance, notices: tuple[str, ...] = ()
    ) -> None:
        self.spec = spec
        self.session = session
        self.plan = FunctionPlan(spec, session.input_dtypes)
        self.outputs: list[OutputSpec] = list(spec.outputs)
        self.output_graph_names = list(dict.fromkeys(o.graph_name for o in self.outputs))
        self.output_checks = OutputChecks(self.outputs)  # implausible results warn
        self.provenance = provenance
        # Built once: every result of this function carries these (e.g. "synthetic data only", or
        # that the version is deprecated).
        texts = (*spec.result_warnings, *notices)
        self.result_warnings = [InputWarning(MODEL_WARNING_FIELD, text) for text in texts]
        self.result_warning_texts = tuple(str(w) for w in self.result_warnings)
        self._column_plans: dict[tuple[Any, ...], ColumnPlan] = {}
        self.scalar_inputs = all(f.type != "tensor" for f in spec.inputs)  # where a one-row batch may take call's path

    def column_plan(
        self,
        names: Sequence[str],
        mapping: Mapping[str, str] | None,
        units: Mapping[str, str] | None,
        keep: Sequence[str],
    ) -> ColumnPlan:
        """:func:`resolve_columns`, remembered: a service scores the same table shape over and over,
        and resolving one (look-alike names included) costs more than scoring a row."""
        key = (
            tuple(names),
            tuple(mapping.items()) if mapping else (),
            tuple(units.items()) if units else (),
            tuple(keep),
        )
        plan = self._column_plans.get(key)
        if plan is None:
            plan = resolve_columns(self.spec, names, mapping=mapping, units=units, keep=keep)
            if len(self._column_plans) >= _COLUMN_PLANS_KEPT:
                self._column_plans.clear()
            self._column_plans[key] = plan
        return plan

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One graph run; each declared output's array (several may read one graph output)."""
        arrays = dict(zip(self.output_graph_names, self.session.run(self.output_graph_names, feeds), strict=True))
        return [_project(spec, arrays[spec.graph_name]) for spec in self.outputs]


class KnowledgeObject:
    """One version of a KO, loaded from a folder and verified; call its functions like code."""

    def __init__(
        self,
        path: Path,
        metadata: KOMetadata,
        raw: dict[str, Any],
        settings: RuntimeSettings | None = None,
        *,
        sunset: str | None = None,
    ) -> None:
        self.path = path
        self.metadata = metadata
        self.raw_metadata = raw
        digests = {f.path: f.sha256 for f in metadata.files}
        # The one identity (kgrid_py.digest): equal to the signed manifest, blind to status changes.
        self.content_digest = folder_identity(path, raw, known=digests)
        self._functions: dict[str, _Function] = {}
        self.recorder: Recorder | None = None  # told of every call (see CallEvent); None: nothing kept
        self.deprecation = deprecation_notice(metadata, sunset)
        notices = (self.deprecation,) if self.deprecation else ()
        for spec in metadata.functions:
            session = get_session(path / spec.model, digests[spec.model], settings)
            _check_graph(spec, session)
            provenance = Provenance(
                metadata.identifier, metadata.version, self.content_digest, digests[spec.model], spec.name
            )
            self._functions[spec.name] = _Function(spec, session, provenance, notices)

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        verify_vectors: bool = False,
        settings: RuntimeSettings | None = None,
        sunset: str | None = None,
    ) -> KnowledgeObject:
        """Load a KO folder: schema, digests of every listed file, graph names; optionally its vectors.

        ``sunset`` (from the shelf's lifecycle record) goes into a deprecated version's result warning.
        """
        path = Path(path)
        raw, metadata = read_metadata(path)
        verify_files(path, metadata)
        ko = cls(path, metadata, raw, settings, sunset=sunset)
        if verify_vectors:
            failed = [o for o in ko.test() if not o.passed]
            if failed:
                details = "; ".join(f"{o.vector.name}: {o.detail}" for o in failed[:5])
                raise InvalidKO(f"{ko.ref}: {len(failed)} test vector(s) failed: {details}")
        return ko

    # -- identity ------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.metadata.identifier

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def status(self) -> str:
        return self.metadata.status

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def functions(self) -> list[str]:
        return list(self._functions)

    def function(self, name: str) -> FunctionSpec:
        return self._function(name).spec

    def __repr__(self) -> str:
        return f"<KnowledgeObject {self.ref} ({self.status}) functions={self.functions}>"

    def _function(self, name: str) -> _Function:
        function = self._functions.get(name)
        if function is None:
            raise NotFound(f"{self.ref} has no function {name!r}", available=self.functions)
        return function

    # -- calling -------------------------------------------------------------------------------

    def call(self, function: str, inputs: Mapping[str, Any], *, subject: str | None = None) -> CallResult:
        """Compute one result. Bad inputs raise :class:`InputError` naming every bad field.

        ``subject`` (a patient id) is handed to the :attr:`recorder`, which keeps only its keyed
        hash; without a recorder it is not used.
        """
        recorder = self.recorder
        if recorder is None:
            return self._call(self._function(function), inputs)[0]
        started, clock = time.time_ns(), time.perf_counter_ns()
        try:
            fn = self._function(function)
            result, feeds = self._call(fn, inputs)
        except Exception as exc:
            status = "refused" if isinstance(exc, InputError | NotFound) else "error"
            provenance = self._provenance_for(function)
            latency = time.perf_counter_ns() - clock
            recorder(CallEvent(provenance, inputs, None, None, status, str(exc), started, latency, subject))
            raise
        used = {p.name: _as_declared(p.spec, _used_value(feeds[p.spec.graph_name])) for p in fn.plan.fields}
        latency = time.perf_counter_ns() - clock
        recorder(CallEvent(fn.provenance, inputs, used, result, "ok", None, started, latency, subject))
        return result

    def _call(self, fn: _Function, inputs: Mapping[str, Any]) -> tuple[CallResult, dict[str, np.ndarray]]:
        feeds, warnings = fn.plan.prepare_one(inputs)
        outputs = fn.run(feeds)
        result = {spec.name: _scalar(spec, array) for spec, array in zip(fn.outputs, outputs, strict=True)}
        if fn.output_checks:
            warnings = warnings + fn.output_checks.one(result)
        if fn.result_warnings:
            warnings = warnings + fn.result_warnings
        return CallResult(result, warnings, fn.provenance), feeds

    def _provenance_for(self, function: str) -> Provenance:
        """The function's provenance; for an unknown function, the KO's, with no model digest."""
        known = self._functions.get(function)
        if known is not None:
            return known.provenance
        return Provenance(self.id, self.version, self.content_digest, "", str(function)[:200])

    def call_batch(
        self,
        function: str,
        table: Any,
        *,
        units: Mapping[str, str] | None = None,
        mapping: Mapping[str, str] | None = None,
        keep: Sequence[str] = (),
        subjects: Sequence[Any] | None = None,
    ) -> BatchResult:
        """Compute a result per row of a dict of columns, a pyarrow Table or a pandas DataFrame.

        One ONNX run covers every valid row. A bad row gets its own error and does not stop
        the others; the output has the input's rows, in order.

        Columns are read as ``kgrid score`` reads a file (:mod:`kgrid_py.columns`): a column feeds
        the input of its name or the one ``mapping`` (``{column: input}``) names; ``units``
        (``{column or input: unit}``) gives its unit; ``keep`` columns are carried unchanged into
        :attr:`BatchResult.kept` (first in :meth:`BatchResult.to_arrow`); other columns are
        ignored, except one named like a removed input or like an input no column feeds (a
        silent default), which is refused. Row errors and warnings name the caller's columns and
        state values in the caller's units. A table that does not fit raises :class:`InputError`.
        ``subjects`` (a patient id per row) go to the :attr:`recorder` only.
        """
        recorder = self.recorder
        if recorder is None:
            return self._call_batch(function, table, units, mapping, keep)[0]
        started, clock = time.time_ns(), time.perf_counter_ns()
        try:
            result, fed, used, valid = self._call_batch(function, table, units, mapping, keep)
        except Exception as exc:
            status = "refused" if isinstance(exc, InputError | NotFound) else "error"
            latency = time.perf_counter_ns() - clock
            event = CallEvent(
                self._provenance_for(function), {}, None, None, status, str(exc), started, latency, subjects, batch=True
            )
            recorder(event)
            raise
        latency = time.perf_counter_ns() - clock
        specs = {p.name: p.spec for p in self._function(function).plan.fields}
        used = {name: _as_declared_column(specs[name], column) for name, column in used.items()}
        recorder(CallEvent(result.provenance, fed, used, result, "ok", None, started, latency, subjects, valid, True))
        return result

    def _call_batch(
        self,
        function: str,
        table: Any,
        units: Mapping[str, str] | None,
        mapping: Mapping[str, str] | None,
        keep: Sequence[str],
    ) -> tuple[BatchResult, dict[str, Any], dict[str, np.ndarray], np.ndarray]:
        fn = self._function(function)
        names, n_rows = _shape_of(table)
        plan = fn.column_plan(names, mapping, units, keep)
        columns = _columns_of(table, plan.column_for.values())
        fed = {name: columns[column] for name, column in plan.column_for.items()}
        if n_rows == 1 and not plan.units and fn.scalar_inputs:
            one = _one_row(fn, fed)
            if one is not None:
                result, used = one
                kept = {column: _kept(table, column) for column in plan.keep}
                answer = BatchResult(result, [None], [_one_row_warnings(fn, result)], fn.provenance, kept)
                return answer, fed, used, _ONE
        batch = fn.plan.prepare_batch(fed, n_rows, plan.units)
        outputs = fn.run(batch.feeds) if batch.valid.any() else [None] * len(fn.outputs)
        result = {spec.name: _column(spec, array, batch.valid) for spec, array in zip(fn.outputs, outputs, strict=True)}
        errors, warnings = CallerTerms(fn.plan, plan).render(batch, fed, n_rows)
        if fn.output_checks:
            for row, found in fn.output_checks.batch(result).items():
                warnings[row] = (*warnings[row], *(str(w) for w in found))
        if fn.result_warning_texts:
            extra = fn.result_warning_texts
            warnings = [w + extra if ok else w for w, ok in zip(warnings, batch.valid.tolist(), strict=True)]
        kept = {column: _kept(table, column) for column in plan.keep}
        used = {p.name: batch.feeds[p.spec.graph_name] for p in fn.plan.fields if p.spec.graph_name in batch.feeds}
        return BatchResult(result, errors, warnings, fn.provenance, kept), fed, used, batch.valid

    # -- self-test -----------------------------------------------------------------------------

    def test(self) -> list[VectorOutcome]:
        """Run the KO's own test vectors."""
        if self.metadata.tests is None:
            return []
        return run_vectors(self, load_vectors(self.path / self.metadata.tests))


def deprecation_notice(metadata: KOMetadata, sunset: str | None = None) -> str | None:
    """The warning every result of a deprecated version carries (naming successor and sunset), else None."""
    if metadata.status != "deprecated":
        return None
    text = f"{metadata.identifier}@{metadata.version} is deprecated"
    if metadata.successor:
        text += f"; use its successor {metadata.successor}"
    if sunset:
        text += f"; sunset {sunset}, after which it may be retired"
    return text


def read_metadata(path: Path) -> tuple[dict[str, Any], KOMetadata]:
    """Read, schema-check and parse ``metadata.json``; every problem is an :class:`InvalidKO`."""
    file = path / METADATA_FILE
    if not path.is_dir():
        raise NotFound(f"no KO folder at {path}")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidKO(f"{path}: no {METADATA_FILE}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidKO(f"{file}: not valid JSON: {exc}") from None
    validate_raw_metadata(raw, str(file))
    try:
        metadata = KOMetadata.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'/'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise InvalidKO(f"{file}: {problems}") from None
    return raw, metadata


def verify_files(path: Path, metadata: KOMetadata) -> None:
    """Check every listed file against its digest, and refuse model files nobody listed."""
    root = path.resolve()
    for entry in metadata.files:
        file = (path / entry.path).resolve()
        if not file.is_relative_to(root):
            raise IntegrityError(f"{entry.path}: points outside the KO folder", entry.path)
        if not file.is_file():
            raise IntegrityError(f"{entry.path}: listed in metadata but missing", entry.path)
        if sha256_file(file) != entry.sha256:
            raise IntegrityError(
                f"{entry.path}: content does not match its sha256 digest (changed or corrupted)", entry.path
            )
    listed = {(path / f.path).resolve() for f in metadata.files}
    for file in sorted(path.rglob("*")):
        if file.suffix in MODEL_SUFFIXES and file.resolve() not in listed:
            raise InvalidKO(f"{file.relative_to(path)}: model file not listed in metadata")


def _check_graph(spec: FunctionSpec, session: ModelSession) -> None:
    declared = {f.graph_name for f in spec.inputs}
    actual = set(session.input_dtypes)
    if declared != actual:
        raise InvalidKO(
            f"function {spec.name!r}: declared inputs {sorted(declared)} do not match the graph "
            f"inputs of {spec.model} {sorted(actual)}"
        )
    missing = [o.graph_name for o in spec.outputs if o.graph_name not in session.output_names]
    if missing:
        raise InvalidKO(
            f"function {spec.name!r}: graph {spec.model} has no output(s) {missing} (it has {session.output_names})"
        )


def _as_declared(spec: FieldSpec, value: Any) -> Any:
    """A fed enum index as its declared label, so a capture record reads "male", not 1.0."""
    if spec.type == "enum" and isinstance(value, float) and spec.enum and 0 <= value < len(spec.enum):
        return spec.enum[int(value)]
    return value


def _as_declared_column(spec: FieldSpec, column: Any) -> Any:
    """:func:`_as_declared` for a batch's fed column."""
    if spec.type != "enum" or not spec.enum:
        return column
    labels = np.asarray(spec.enum, dtype=object)
    return labels[np.asarray(column).reshape(-1).astype(np.int64)]


def _used_value(array: np.ndarray) -> Any:
    """One fed value as plain Python; a tensor (an image) only by its shape, never its voxels."""
    if array.size == 1:
        return array.item()
    return {"shape": list(array.shape[1:]), "dtype": str(array.dtype)}


def _project(spec: OutputSpec, array: np.ndarray) -> np.ndarray:
    if spec.select is not None:
        return array[..., spec.select]
    if spec.argmax:
        return array.argmax(axis=-1)
    return array


def _scalar(spec: OutputSpec, array: np.ndarray) -> Any:
    value = array[0]
    if spec.type == "enum":
        return spec.enum[int(value)]  # type: ignore[index]
    if spec.type == "boolean":
        return bool(value)
    if spec.type == "integer":
        return int(value)
    if spec.type == "tensor":
        return value.tolist()
    return float(value)


_ONE = np.ones(1, dtype=bool)
_COLUMN_PLANS_KEPT = 64
_PLAIN_CELL = (float, int, str, type(None))
_NOT_PLAIN = object()  # what _cell returns for a cell only the batch path may judge


def _cell(column: Any) -> Any:
    """The one cell of a one-row column when it is a plain value call() takes as it is, else ``_NOT_PLAIN``."""
    if isinstance(column, np.ndarray):
        if column.ndim != 1 or column.dtype.kind not in "fUO":
            return _NOT_PLAIN
        value = column[0]
        value = value.item() if isinstance(value, np.generic) else value
    elif isinstance(column, list | tuple):
        value = column[0]
    else:  # pandas, Arrow: the batch path reads those
        return _NOT_PLAIN
    if not isinstance(value, _PLAIN_CELL):  # bool is an int: call and the batch path judge it alike
        return _NOT_PLAIN
    return value


def _one_row(fn: _Function, fed: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """A one-row batch through the single-call plan, five to seven times cheaper than the batch plan.

    Taken only where it cannot differ from the batch path: plain cells, and a row call() accepts
    without any input warning; anything else (an error, a warning to render in the caller's
    terms, pandas or Arrow columns, units) returns None and the batch path answers. The outputs
    are the batch path's columns of the same graph run (tests compare the two row for row)."""
    row = {}
    for name, column in fed.items():
        value = _cell(column)
        if value is _NOT_PLAIN:
            return None
        row[name] = value
    try:
        feeds, warnings = fn.plan.prepare_one(row)
    except InputError:
        return None
    if warnings:
        return None
    outputs = fn.run(feeds)
    result = {spec.name: _column(spec, array, _ONE) for spec, array in zip(fn.outputs, outputs, strict=True)}
    used = {p.name: feeds[p.spec.graph_name] for p in fn.plan.fields if p.spec.graph_name in feeds}
    return result, used


def _one_row_warnings(fn: _Function, result: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The one row's warnings as the batch path words them: output checks, then the function's notices."""
    found: tuple[str, ...] = ()
    if fn.output_checks:
        for _, checks in fn.output_checks.batch(result).items():
            found = (*found, *(str(w) for w in checks))
    return found + fn.result_warning_texts


def _column(spec: OutputSpec, array: np.ndarray | None, valid: np.ndarray) -> np.ndarray:
    n = len(valid)
    if spec.type == "number":
        out = np.full(n, np.nan)
        if array is not None:
            out[valid] = array
        return out
    if spec.type == "tensor":
        out = np.full((n, *(spec.shape or ())), np.nan)
        if array is not None:
            out[valid] = array
        return out
    out = np.full(n, None, dtype=object)
    if array is not None:
        if spec.type == "enum":
            labels = np.asarray(spec.enum, dtype=object)
            out[valid] = labels[array.astype(np.int64)]
        elif spec.type == "boolean":
            out[valid] = array.astype(bool)
        else:
            out[valid] = array.astype(np.int64)
    return out


def _shape_of(table: Any) -> tuple[list[str], int]:
    """Column names and row count of a dict of columns, a pyarrow Table or a pandas DataFrame."""
    if isinstance(table, pa.Table | pa.RecordBatch):
        return list(table.column_names), table.num_rows
    if hasattr(table, "columns") and hasattr(table, "to_numpy") and hasattr(table, "index"):  # pandas
        return [str(name) for name in table.columns], len(table.index)
    if isinstance(table, Mapping):
        lengths = {len(v) for v in table.values()}
        if len(lengths) > 1:
            sizes = ", ".join(f"{name}={len(col)}" for name, col in table.items())
            raise InputError([FieldError("(table)", f"columns differ in length: {sizes}")])
        return [str(name) for name in table], lengths.pop() if lengths else 0
    raise TypeError(
        f"call_batch takes a dict of columns, a pyarrow Table or a pandas DataFrame, not {type(table).__name__}"
    )


def _columns_of(table: Any, names: Iterable[str]) -> dict[str, Any]:
    """The named columns (only those: a wide table's other columns are never converted)."""
    columns: dict[str, Any] = {}
    for name in names:
        if isinstance(table, pa.Table | pa.RecordBatch):
            col = table.column(name)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_dictionary(col.type):
                columns[name] = col  # labels stay in Arrow: enum lookup happens there
            else:
                columns[name] = col.to_numpy(zero_copy_only=False)
        elif isinstance(table, Mapping):
            columns[name] = table[name]
        else:  # pandas: column labels may be non-strings; _shape_of named them with str()
            label = next(c for c in table.columns if str(c) == name)
            columns[name] = table[label].to_numpy()
    return columns


def _kept(table: Any, name: str) -> Any:
    """A column carried through unchanged: Arrow stays Arrow, pandas stays a Series, lists stay lists."""
    if isinstance(table, pa.Table | pa.RecordBatch):
        return table.column(name)
    if isinstance(table, Mapping):
        return table[name]
    return table[next(c for c in table.columns if str(c) == name)]


def _arrow_column(column: Any) -> pa.Array | pa.ChunkedArray:
    return column if isinstance(column, pa.Array | pa.ChunkedArray) else pa.array(column)
