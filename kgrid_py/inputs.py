"""Turn caller inputs into graph feeds: types, units, bounds, defaults and warnings.

A :class:`FunctionPlan` is compiled once per function from its declaration. It checks one patient
(:meth:`FunctionPlan.prepare_one`, the latency path) or a whole table at once
(:meth:`FunctionPlan.prepare_batch`, vectorised; a bad row gets its own errors and the others
still run).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kgrid_py.errors import FieldError, InputError
from kgrid_py.metadata import Bounds, FieldSpec, FunctionSpec
from kgrid_py.units import UnitMismatch, UnitTooLong, conversion_factor

__all__ = ["BOOLEAN_SPELLINGS", "BatchFeeds", "FieldPlan", "FunctionPlan", "InputWarning", "parse_boolean"]

MODEL_WARNING_FIELD = "(model)"  # the field of warnings a function attaches to every result

_MAX_CACHED_UNITS = 64  # distinct unit spellings remembered per field; callers choose them

_TENSOR_DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "bool": np.bool_}


@dataclass(frozen=True)
class InputWarning:
    """An input outside the model's intended population: the result is extrapolation."""

    field: str
    message: str
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", f"{self.field}: {self.message}")  # batches print it per row

    def __str__(self) -> str:
        return self.text


def _fmt(value: float) -> str:
    return f"{value:g}"


BOOLEAN_SPELLINGS: dict[str, bool] = {"true": True, "false": False, "1": True, "0": False}
"""Text a boolean input accepts, compared case-insensitively (CSV cells, form fields)."""


def parse_boolean(value: Any) -> float:
    """A boolean input as the graph's 1.0 / 0.0, the same in every path (call, batch, CSV, Arrow).

    Accepted: ``True``/``False`` (Python, numpy), the numbers 0 and 1 (ints, or floats that are
    exactly 0.0 or 1.0, as a pandas column with gaps holds them) and the text ``true``,
    ``false``, ``1``, ``0`` in any case. Anything else (``"yes"``, 2, 0.5) is an error rather
    than a guess.
    """
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.lower() in BOOLEAN_SPELLINGS:
        return 1.0 if BOOLEAN_SPELLINGS[value.lower()] else 0.0
    raise ValueError(f"must be true or false (or 1/0), got {_describe(value)}")


@dataclass(frozen=True)
class _Suspect:
    """A compiled :class:`~kgrid_py.metadata.SuspectUnit`: thresholds in the field's unit."""

    factor: float  # from the unit the hint is about into the field's unit
    low: float | None
    high: float | None
    given: str
    likely: str
    likely_factor: float
    unit: str
    note: str | None

    def matches(self, number: float, factor: float) -> bool:
        if not math.isclose(factor, self.factor, rel_tol=1e-9):
            return False
        return (self.high is not None and number > self.high) or (self.low is not None and number < self.low)

    def describe(self, number: float) -> str:
        raw = number / self.factor
        side = f"above {_fmt(self.high / self.factor)}" if self.high is not None and number > self.high else None
        side = side or f"below {_fmt((self.low or 0.0) / self.factor)}"
        converted = raw * self.likely_factor
        note = f" {self.note}" if self.note else ""
        return (
            f"{_fmt(raw)} {self.given} looks like a value in {self.likely} (values {side} {self.given} are unusual); "
            f'if it is in {self.likely}, send {{"value": {_fmt(raw)}, "unit": "{self.likely}"}} '
            f"({_fmt(converted)} {self.unit}).{note}"
        )


class FieldPlan:
    """How one declared input is checked and fed to the graph."""

    def __init__(self, spec: FieldSpec, graph_dtype: type) -> None:
        self.spec = spec
        self.name = spec.name
        self.kind = spec.type
        self.graph_dtype = graph_dtype
        self.unit = spec.unit
        self.declared_units = [(u.unit, u.factor) for u in spec.accepted_units]
        self.enum_index = {label: float(i) for i, label in enumerate(spec.enum or [])}
        self.enum_values = pa.array(spec.enum or [], type=pa.string())
        self.hard = spec.hard_bounds
        self.population = spec.population_bounds
        self.default = spec.default
        self._factors: dict[str, float] = {}
        self.suspects = self._compile_suspects()

    def _compile_suspects(self) -> list[_Suspect]:
        """The field's suspect-unit hints, thresholds converted into its unit.

        A hint whose units do not convert is skipped: metadata validation refuses one, and a
        caller's view of the field in another unit (``kgrid_py.columns``) only rewrites text.
        """
        suspects = []
        for hint in self.spec.suspect_units:
            if self.unit is None:
                continue
            try:
                factor = self.factor_for(hint.given) if hint.given is not None else 1.0
                likely_factor = self.factor_for(hint.likely)
            except ValueError:
                continue
            suspects.append(
                _Suspect(
                    factor=factor,
                    low=None if hint.below is None else hint.below * factor,
                    high=None if hint.above is None else hint.above * factor,
                    given=hint.given or self.unit,
                    likely=hint.likely,
                    likely_factor=likely_factor,
                    unit=self.unit,
                    note=hint.note,
                )
            )
        return suspects

    # -- one value ---------------------------------------------------------------------------

    def factor_for(self, unit: Any) -> float:
        """The multiplier from ``unit`` into the declared unit; an error if it has none.

        Units are caller text: an over-long one is refused unread, messages quote at most 40
        characters of it, and the per-field cache of factors is bounded.
        """
        if not isinstance(unit, str):
            raise ValueError(f"unit must be a string, got {type(unit).__name__}")
        factor = self._factors.get(unit)
        if factor is None:
            if self.unit is None:
                raise ValueError(f"takes no unit, but {_describe(unit)} was given")
            try:
                factor = conversion_factor(unit, self.unit, self.declared_units)
            except UnitTooLong as exc:
                raise ValueError(str(exc)) from None
            except UnitMismatch:
                accepted = [self.unit] + [u for u, _ in self.declared_units]
                raise ValueError(
                    f"unit {_describe(unit)} cannot be converted to {self.unit!r} (accepted: {', '.join(accepted)})"
                ) from None
            if len(self._factors) < _MAX_CACHED_UNITS:
                self._factors[unit] = factor
        return factor

    def coerce(self, value: Any) -> Any:
        """Check one value and return what the graph gets; ``ValueError`` says what is wrong."""
        return self.coerce_with_factor(value)[0]

    def coerce_with_factor(self, value: Any) -> tuple[Any, float]:
        """:meth:`coerce`, plus the factor the value's unit was converted by (1.0 without a unit)."""
        kind = self.kind
        if kind == "number" or kind == "integer":
            factor = 1.0
            if isinstance(value, Mapping):
                extra = set(value) - {"value", "unit"}
                if extra or "value" not in value:
                    raise ValueError('a quantity is {"value": number, "unit": "UCUM unit"}')
                if "unit" in value:
                    factor = self.factor_for(value["unit"])
                value = value["value"]
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                raise ValueError(f"must be a number, got {_describe(value)}")
            try:
                number = float(value)
            except OverflowError:
                raise ValueError("is too large to be a number") from None
            if not math.isfinite(number):
                raise ValueError(f"must be a finite number, got {number}")
            if kind == "integer" and not number.is_integer():
                raise ValueError(f"must be a whole number, got {value}")
            number *= factor
            if self.hard is not None and not self.hard.contains(number):
                raise ValueError(self.impossible_with_hint(number, factor))
            return number, factor
        if kind == "boolean":
            return parse_boolean(value), 1.0
        if kind == "enum":
            index = self.enum_index.get(value) if isinstance(value, str) else None
            if index is None:
                raise ValueError(f"must be one of {', '.join(self.enum_index)}; got {_describe(value)}")
            return index, 1.0
        return self._coerce_tensor(value), 1.0

    def _coerce_tensor(self, value: Any) -> np.ndarray:
        if self.spec.preprocessing == "mni152-volume":
            array = _prepare_volume(value)
        else:
            try:
                array = np.asarray(value, dtype=_TENSOR_DTYPES[self.spec.dtype or "float64"])
            except (TypeError, ValueError):
                raise ValueError(f"must be a numeric array, got {_describe(value)}") from None
        shape = tuple(self.spec.shape or ())
        if array.shape != shape:
            raise ValueError(f"must have shape {list(shape)}, got {list(array.shape)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError("contains NaN or infinite values")
        return array

    def impossible(self, number: float) -> str:
        """The message for a value outside the hard bounds."""
        assert self.hard is not None
        unit = f" {self.unit}" if self.unit else ""
        return f"{_fmt(number)}{unit} is impossible here: must be {self.hard.describe()}"

    def impossible_with_hint(self, number: float, factor: float) -> str:
        """:meth:`impossible`, and the likely unit where a suspect-unit hint matches."""
        suspect = self.suspect_matching(number, factor)
        message = self.impossible(number)
        return message if suspect is None else f"{message}; {suspect.describe(number)}"

    def suspect_matching(self, number: float, factor: float) -> _Suspect | None:
        """The first hint that says ``number`` (converted by ``factor``) looks like another unit."""
        for suspect in self.suspects:
            if suspect.matches(number, factor):
                return suspect
        return None

    def suspect_for(self, number: float, factor: float) -> InputWarning | None:
        """A warning naming the likely unit, when a suspect-unit hint matches."""
        suspect = self.suspect_matching(number, factor)
        return None if suspect is None else InputWarning(self.name, suspect.describe(number))

    def warnings_for(self, number: float, factor: float) -> list[InputWarning]:
        """Every warning about one checked number: population bounds, then a likely unit slip."""
        found = [self.warning_for(number), self.suspect_for(number, factor)]
        return [w for w in found if w is not None]

    def warning_for(self, number: float) -> InputWarning | None:
        if self.population is None or self.population.contains(number):
            return None
        return InputWarning(self.name, f"{_fmt(number)}{self._warning_tail}")

    @cached_property
    def _warning_tail(self) -> str:
        """Everything after the value: the same for every warning of this field."""
        assert self.population is not None
        unit = f" {self.unit}" if self.unit else ""
        note = f" {self.spec.population_note}" if self.spec.population_note else ""
        return (
            f"{unit} is outside the intended population ({self.population.describe()}); "
            f"the result is an extrapolation.{note}"
        )


def _prepare_volume(value: Any) -> np.ndarray:
    """A brain volume from a pathlib.Path, file bytes, {"base64": ...}, or nested lists / an array.

    A plain string is refused on purpose: over HTTP it would let a caller name server files.
    """
    from kgrid_py.imaging import prepare_volume

    if isinstance(value, str):
        raise ValueError('give the file as bytes, {"base64": "..."}, a pathlib.Path or an array, not a string')
    if isinstance(value, Mapping):
        if set(value) != {"base64"} or not isinstance(value["base64"], str):
            raise ValueError('an encoded file is {"base64": "<the .nii, .nii.gz or .npy bytes>"}')
        try:
            value = base64.b64decode(value["base64"], validate=True)
        except binascii.Error:
            raise ValueError("base64 content is not valid base64") from None
    elif isinstance(value, list):
        try:
            value = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError("must be a numeric array") from None
    try:
        return prepare_volume(value)
    except InputError as exc:
        raise ValueError("; ".join(e.message for e in exc.errors)) from None


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class BatchFeeds:
    """A batch ready to run: feeds for the valid rows, and every row's errors and warnings."""

    feeds: dict[str, np.ndarray]
    valid: np.ndarray  # bool mask over all rows
    errors: dict[int, list[FieldError]]  # only rows that have some
    warnings: dict[int, list[InputWarning]]


class FunctionPlan:
    """The compiled input contract of one function."""

    def __init__(self, spec: FunctionSpec, graph_dtypes: Mapping[str, type]) -> None:
        self.spec = spec
        self.fields = [FieldPlan(f, graph_dtypes[f.graph_name]) for f in spec.inputs]
        self.by_name = {f.name: f for f in self.fields}
        self.required = [f.name for f in self.fields if f.spec.required]
        self.removed = spec.removed_inputs
        self.constraints = spec.constraints
        self.relations = spec.relations

    # -- one patient ---------------------------------------------------------------------

    def prepare_one(self, inputs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], list[InputWarning]]:
        if not isinstance(inputs, Mapping):
            raise InputError(
                [FieldError("(body)", f"inputs must be an object of named fields, got {_describe(inputs)}")]
            )
        errors: list[FieldError] = []
        values: dict[str, Any] = {}
        factors: dict[str, float] = {}
        for name in inputs:
            if name not in self.by_name:
                errors.append(self._unknown(name))
        for plan in self.fields:
            value = inputs.get(plan.name)
            if value is None or _is_nan(value):  # NaN is missing, as it is in a table
                if plan.spec.required:
                    errors.append(FieldError(plan.name, "is required" if value is None else "is missing"))
                    continue
                value = plan.default
                if value is None:
                    errors.append(FieldError(plan.name, "has no value and no default"))
                    continue
            try:
                values[plan.name], factors[plan.name] = plan.coerce_with_factor(value)
            except ValueError as exc:
                errors.append(FieldError(plan.name, str(exc)))
        if not errors:
            errors.extend(self._check_constraints_one(values))
        if errors:
            raise InputError(errors)
        warnings: list[InputWarning] = []
        feeds: dict[str, np.ndarray] = {}
        for plan in self.fields:
            value = values[plan.name]
            if plan.population is not None or plan.suspects:
                warnings.extend(plan.warnings_for(value, factors[plan.name]))
            if plan.kind == "tensor":
                feeds[plan.spec.graph_name] = value[np.newaxis].astype(plan.graph_dtype, copy=False)
            else:
                feeds[plan.spec.graph_name] = np.array((value,), dtype=plan.graph_dtype)
        return feeds, warnings

    def _unknown(self, name: str) -> FieldError:
        if name in self.removed:
            return FieldError(name, f"is no longer an input of this function: {self.removed[name]}")
        return FieldError(name, f"is not an input of this function (inputs: {', '.join(self.by_name)})")

    def _check_constraints_one(self, values: Mapping[str, Any]) -> list[FieldError]:
        """Cross-field rules on the checked values (units converted, labels as their codes)."""
        errors = []
        for rule in self.constraints:
            if all(values[name] == _code(self.by_name[name], want) for name, want in rule.when.items()):
                value = values[rule.field]
                if not rule.bounds.contains(value):
                    errors.append(FieldError(rule.field, rule.message))
        for relation in self.relations:
            if sum(values[name] for name in relation.fields) > values[relation.at_most]:
                errors.append(FieldError(relation.fields[0], relation.message))
        return errors

    # -- a table -------------------------------------------------------------------------

    def prepare_batch(
        self, columns: Mapping[str, Sequence[Any] | np.ndarray], n_rows: int, units: Mapping[str, str] | None = None
    ) -> BatchFeeds:
        units = units or {}
        unknown = [self._unknown(name) for name in columns if name not in self.by_name]
        unknown += [
            FieldError(name, "a unit was given for a column that is not an input")
            for name in units
            if name not in self.by_name
        ]
        if unknown:
            raise InputError(unknown)
        errors: dict[int, list[FieldError]] = {}
        valid = np.ones(n_rows, dtype=bool)
        arrays: dict[str, np.ndarray] = {}
        factors: dict[str, np.ndarray | float] = {}
        for plan in self.fields:
            column = columns.get(plan.name)
            if column is None:
                if plan.spec.required or plan.default is None:
                    raise InputError([FieldError(plan.name, "is required (no such column)")])
                column = [plan.default] * n_rows
            if len(column) != n_rows:
                raise InputError([FieldError(plan.name, f"has {len(column)} rows, expected {n_rows}")])
            unit = units.get(plan.name)
            try:
                factor = plan.factor_for(unit) if unit is not None else 1.0
            except ValueError as exc:
                raise InputError([FieldError(plan.name, str(exc))]) from None
            array, bad, factors[plan.name] = self._column(plan, column, factor, unit)
            for row, error in bad.items():
                valid[row] = False
                errors.setdefault(row, []).append(error)
            arrays[plan.name] = array
        self._check_constraints_batch(arrays, valid, errors)
        warnings: dict[int, list[InputWarning]] = {}
        all_valid = bool(valid.all())
        feeds: dict[str, np.ndarray] = {}
        for plan in self.fields:
            array = arrays[plan.name]
            if plan.population is not None and plan.kind in ("number", "integer"):
                outside = valid & ~_within(array, plan.population)
                rows = np.flatnonzero(outside)
                # One message per distinct value, not per row: values repeat (whole-year ages).
                made: dict[float, InputWarning | None] = {}
                for row, value in zip(rows.tolist(), array[rows].tolist(), strict=True):
                    warning = made[value] if value in made else made.setdefault(value, plan.warning_for(value))
                    if warning is not None:
                        warnings.setdefault(row, []).append(warning)
            for suspect in plan.suspects:
                _warn_suspect(plan, suspect, array, factors[plan.name], valid, warnings)
            selected = array if all_valid else array[valid]
            feeds[plan.spec.graph_name] = np.ascontiguousarray(selected, dtype=plan.graph_dtype)
        return BatchFeeds(feeds, valid, errors, warnings)

    def _column(
        self, plan: FieldPlan, column: Any, factor: float, unit: str | None
    ) -> tuple[np.ndarray, dict[int, FieldError], np.ndarray | float]:
        """A column as graph values (vectorised where the column allows), its bad rows, and the
        unit factor of each row (one float when the whole column shares it)."""
        fast = _vectorised(plan, column, factor)
        if fast is not None:
            return (*fast, factor)
        if isinstance(column, pa.Array | pa.ChunkedArray):
            column = column.to_pylist()
        n = len(column)
        bad: dict[int, FieldError] = {}
        if plan.kind == "tensor":
            shape = tuple(plan.spec.shape or ())
            array = np.zeros((n, *shape), dtype=_TENSOR_DTYPES[plan.spec.dtype or "float64"])
        else:
            array = np.zeros(n, dtype=np.float64)
        row_factors = np.full(n, factor)
        for row, value in enumerate(column):
            if _is_missing(value):
                if plan.default is None:
                    bad[row] = FieldError(plan.name, "is missing")
                    continue
                value = plan.default
            if unit is not None and not isinstance(value, Mapping):
                value = {"value": value, "unit": unit}
            try:
                array[row], row_factors[row] = plan.coerce_with_factor(value)
            except ValueError as exc:
                bad[row] = FieldError(plan.name, str(exc))
        return array, bad, row_factors

    def _check_constraints_batch(
        self, arrays: Mapping[str, np.ndarray], valid: np.ndarray, errors: dict[int, list[FieldError]]
    ) -> None:
        for rule in self.constraints:
            applies = valid.copy()
            for name, want in rule.when.items():
                applies &= arrays[name] == _code(self.by_name[name], want)
            broken = applies & ~_within(arrays[rule.field], rule.bounds)
            for row in np.flatnonzero(broken):
                valid[row] = False
                errors.setdefault(int(row), []).append(FieldError(rule.field, rule.message))
        for relation in self.relations:
            total = sum(arrays[name] for name in relation.fields)
            for row in np.flatnonzero(valid & (total > arrays[relation.at_most])):
                valid[row] = False
                errors.setdefault(int(row), []).append(FieldError(relation.fields[0], relation.message))


def _code(plan: FieldPlan, value: str | bool | float) -> float:
    """A constraint's literal as the field's checked value: an enum's index, a boolean's 0/1."""
    if plan.kind == "enum":
        return plan.enum_index.get(value, -1.0)  # type: ignore[arg-type]
    if plan.kind == "boolean":
        return 1.0 if value else 0.0
    return float(value)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float | np.floating) and value != value


def _is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA (a nullable boolean or integer column's gap) is a missing cell."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType"


def _vectorised(plan: FieldPlan, column: Any, factor: float) -> tuple[np.ndarray, dict[int, FieldError]] | None:
    """Check a plain column with whole-array operations; None when it needs row-by-row care."""
    if plan.kind in ("number", "integer"):
        array = _as_float_array(column)
        if array is None:
            return None
        array = array * factor if factor != 1.0 else array
        if plan.default is not None:  # a missing cell (NaN) takes the default, as in call()
            missing = np.isnan(array)
            if missing.any():
                array = np.where(missing, float(plan.default), array)
        finite = np.isfinite(array)
        problem = ~finite
        if plan.kind == "integer":
            problem |= finite & (array != np.round(array))
        if plan.hard is not None:
            problem |= finite & ~_within(array, plan.hard)
        if not problem.any():
            return array, {}
        bad = {
            int(row): FieldError(plan.name, _row_message(plan, array[row], factor)) for row in np.flatnonzero(problem)
        }
        return np.where(problem, 0.0, array), bad
    if plan.kind == "boolean":
        array = column if isinstance(column, np.ndarray) else None
        if isinstance(column, pa.Array | pa.ChunkedArray):
            if column.null_count or not (pa.types.is_boolean(column.type) or pa.types.is_integer(column.type)):
                return None
            array = column.to_numpy(zero_copy_only=False)
        if array is None:
            array = np.asarray(column) if all(type(v) in (bool, int) for v in column) else None
        if array is None or array.ndim != 1:
            return None
        if array.dtype == np.bool_:
            return array.astype(np.float64), {}
        if array.dtype.kind in "iuf" and np.isin(array, (0, 1)).all():  # 0/1, as parse_boolean takes
            return array.astype(np.float64), {}
        return None  # the row path explains each bad cell
    if plan.kind == "enum":
        try:  # Arrow's hash lookup beats one numpy comparison per label
            strings = _as_arrow_strings(column)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None
        if strings is None:
            return None
        codes = pc.index_in(strings, value_set=plan.enum_values)
        if codes.null_count:
            return None  # defaults, None and bad labels: the row path explains each one
        return codes.to_numpy().astype(np.float64), {}
    return None


def _as_arrow_strings(column: Any) -> pa.Array | pa.ChunkedArray | None:
    if isinstance(column, pa.Array | pa.ChunkedArray):
        return column.cast(pa.string()) if column.type != pa.string() else column
    array = column if isinstance(column, np.ndarray) else np.asarray(column, dtype=object)
    if array.ndim != 1 or array.dtype.kind not in "UO":
        return None
    return pa.array(array, type=pa.string())


def _as_float_array(column: Any) -> np.ndarray | None:
    """The column as float64 if it holds only real numbers (None becomes NaN), else None.

    Text that looks like a number ("63") and booleans are not numbers: such a column takes the
    row path, where each cell gets the same error a single call would give.
    """
    if isinstance(column, np.ndarray):
        return column.astype(np.float64) if column.dtype.kind in "iuf" and column.ndim == 1 else None
    if isinstance(column, pa.Array | pa.ChunkedArray):
        numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        return column.to_numpy(zero_copy_only=False).astype(np.float64) if numeric else None
    if not all(v is None or type(v) in (int, float) or isinstance(v, np.integer | np.floating) for v in column):
        return None
    return np.asarray(column, dtype=np.float64)


def _row_message(plan: FieldPlan, value: float, factor: float) -> str:
    if not np.isfinite(value):
        return "is missing" if np.isnan(value) else f"must be a finite number, got {value}"
    if plan.kind == "integer" and value != round(value):
        return f"must be a whole number, got {value:g}"
    return plan.impossible_with_hint(value, factor)


def _warn_suspect(
    plan: FieldPlan,
    suspect: _Suspect,
    array: np.ndarray,
    factors: np.ndarray | float,
    valid: np.ndarray,
    warnings: dict[int, list[InputWarning]],
) -> None:
    """Add a likely-unit warning to every valid row the hint matches (one message per value)."""
    same_unit = np.isclose(factors, suspect.factor, rtol=1e-9, atol=0.0)
    beyond = np.zeros(array.shape, dtype=bool)
    if suspect.high is not None:
        beyond |= array > suspect.high
    if suspect.low is not None:
        beyond |= array < suspect.low
    rows = np.flatnonzero(valid & same_unit & beyond)
    made: dict[float, InputWarning] = {}
    for row, value in zip(rows.tolist(), array[rows].tolist(), strict=True):
        warning = made.get(value)
        if warning is None:
            warning = made[value] = InputWarning(plan.name, suspect.describe(value))
        warnings.setdefault(row, []).append(warning)


def _within(array: np.ndarray, bounds: Bounds) -> np.ndarray:
    ok = np.ones(array.shape, dtype=bool)
    if bounds.minimum is not None:
        ok &= array > bounds.minimum if bounds.exclusive_minimum else array >= bounds.minimum
    if bounds.maximum is not None:
        ok &= array < bounds.maximum if bounds.exclusive_maximum else array <= bounds.maximum
    return ok
