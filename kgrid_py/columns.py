"""Which columns of a table feed which inputs, and errors told in the caller's columns and units.

One resolver for :meth:`KnowledgeObject.call_batch <kgrid_py.ko.KnowledgeObject.call_batch>`,
``kgrid score`` and Spark, so a table means the same thing on every path:

- a column feeds the input of the same name, or the input ``mapping`` (``{column: input}``) names;
- ``units`` (``{column or input: UCUM unit}``) says what unit a column's plain numbers are in;
- ``keep`` columns are carried to the result unchanged (they may also feed an input);
- every other column is ignored (a table holds more than a model reads: ids, dates, notes),
  except where ignoring it could change a result silently. A column named like an input that
  earlier versions took (``removed_inputs``), or like an input that no column feeds (same name
  but another case, or a near spelling: ``Smoker`` or ``smokr`` beside an optional ``smoker``
  that would otherwise take its default) is refused. Map it, ``keep`` it, or drop it.

A single :meth:`~kgrid_py.ko.KnowledgeObject.call` stays strict (an unknown field is an error):
a request names exactly the inputs it means, while a table is a data set with other columns.

Errors and warnings about a row name the caller's column, and for a column given a unit, state
the value and the bounds in that unit (``acr: 3500 mg/mmol is impossible here: must be ...``),
so the analyst can find the cell without knowing the KO's own field names and units.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from kgrid_py.errors import FieldError, InputError
from kgrid_py.inputs import BatchFeeds, FieldPlan, FunctionPlan, InputWarning
from kgrid_py.metadata import Bounds, FunctionSpec

__all__ = ["CLI_LABELS", "RESERVED_COLUMNS", "CallerTerms", "ColumnPlan", "Labels", "resolve_columns"]

RESERVED_COLUMNS = ("error", "warnings")  # a result's own columns, beside the outputs


@dataclass(frozen=True)
class Labels:
    """How messages name the options: the library's keywords, or ``kgrid score``'s flags."""

    mapping: str = "mapping"
    units: str = "units"
    keep: str = "keep"
    source: str = "the table"


CLI_LABELS = Labels("--map", "--unit", "--keep", "the input")


@dataclass(frozen=True)
class ColumnPlan:
    """A resolved table: the column feeding each input, the units, the kept and the ignored columns."""

    column_for: dict[str, str]  # input name -> column name
    units: dict[str, str]  # input name -> unit of its column's plain numbers
    keep: list[str]
    ignored: list[str]

    @property
    def input_of(self) -> dict[str, str]:
        return {column: name for name, column in self.column_for.items()}


def resolve_columns(
    spec: FunctionSpec,
    columns: Sequence[str],
    *,
    mapping: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    keep: Sequence[str] = (),
    labels: Labels = Labels(),
) -> ColumnPlan:
    """Resolve ``mapping``, ``units`` and ``keep`` against ``columns``; an :class:`InputError` if they do not fit.

    Every problem is reported at once, each as a ``(table)`` field error naming the option.
    """
    inputs = {f.name: f for f in spec.inputs}
    names = list(columns)
    problems: list[str] = []
    column_for: dict[str, str] = {}
    for column, name in (mapping or {}).items():
        if column not in names:
            problems.append(f"{labels.mapping} {column}={name}: no column {column!r} in {labels.source}")
        elif name not in inputs:
            problems.append(f"{labels.mapping} {column}={name}: {name!r} is not an input (inputs: {', '.join(inputs)})")
        elif name in column_for:
            problems.append(f"{labels.mapping}: both {column_for[name]!r} and {column!r} map to input {name!r}")
        else:
            column_for[name] = column
    mapped_away = set(mapping or {})
    for name in inputs:
        if name not in column_for and name in names and name not in mapped_away:
            column_for[name] = name
    input_of = {column: name for name, column in column_for.items()}
    resolved_units: dict[str, str] = {}
    for key, unit in (units or {}).items():
        name = input_of.get(key, key)
        if name not in inputs:
            problems.append(f"{labels.units} {key}={unit}: {key!r} is neither an input nor a column mapped to one")
        elif name not in column_for:
            problems.append(f"{labels.units} {key}={unit}: no column feeds input {name!r}")
        elif name in resolved_units:
            problems.append(f"{labels.units}: input {name!r} is given a unit twice")
        else:
            resolved_units[name] = unit
    kept = list(keep)
    taken = {o.name for o in spec.outputs} | set(RESERVED_COLUMNS)
    for column in kept:
        if column not in names:
            problems.append(f"{labels.keep} {column}: no such column in {labels.source} (columns: {_list(names)})")
        elif column in taken:
            problems.append(f"{labels.keep} {column}: the output already has a column {column!r}; rename it")
    if len(set(kept)) != len(kept):
        problems.append(f"{labels.keep} names a column twice")
    claimed = set(input_of) | set(kept)
    unclaimed = [c for c in names if c not in claimed]
    for column in unclaimed:
        if column in spec.removed_inputs:
            problems.append(f"column {column!r} is no longer an input of this function: {spec.removed_inputs[column]}")
    missing = [
        FieldError(
            name, f"is required, but no column feeds it{_hint(name, unclaimed, labels)} (columns: {_list(names)})"
        )
        for name in (f.name for f in spec.inputs)
        if name not in column_for and inputs[name].default is None
    ]
    for f in spec.inputs:
        if f.name in column_for or f.default is None:
            continue
        lookalike = _lookalike(f.name, unclaimed)
        if lookalike is not None:
            problems.append(
                f"column {lookalike!r} looks like input {f.name!r}, which no column feeds, so every row would "
                f"take its default ({f.default!r}): map it with {labels.mapping} {lookalike}={f.name}, "
                f"or {labels.keep} it to carry it unchanged"
            )
    if problems or missing:
        raise InputError(missing + [FieldError("(table)", p) for p in problems])
    ignored = [c for c in unclaimed if c not in kept]
    return ColumnPlan(column_for, resolved_units, kept, ignored)


def _lookalike(name: str, columns: Sequence[str]) -> str | None:
    """A column that is probably meant to be input ``name``: the same name in another case, or a near spelling."""
    lowered = {c.lower(): c for c in columns}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.8)
    return lowered[close[0]] if close else None


def _hint(name: str, columns: Sequence[str], labels: Labels) -> str:
    lookalike = _lookalike(name, columns)
    if lookalike is None:
        return f"; map one with {labels.mapping} COLUMN={name}"
    return f"; column {lookalike!r} looks like it: map it with {labels.mapping} {lookalike}={name}"


def _list(names: Sequence[str], limit: int = 20) -> str:
    """Column names for a message, at most ``limit`` of them (a hostile file may have millions)."""
    shown = ", ".join(repr(n) if len(n) <= 40 else repr(n[:37] + "...") for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# -- row messages in the caller's terms --------------------------------------------------------


class CallerTerms:
    """Rewrites a batch's errors and warnings to name the caller's columns and units."""

    def __init__(self, plan: FunctionPlan, columns: ColumnPlan) -> None:
        """Build after the batch was prepared: its units are then known to convert."""
        self.plan = plan
        self.column_of = dict(columns.column_for)
        self.units = dict(columns.units)
        self.factors = {name: plan.by_name[name].factor_for(unit) for name, unit in self.units.items()}
        # The field as the caller sees it: their column's name, unit and bounds in that unit.
        self.views = {
            name: _view(plan.by_name[name], self.column_of[name], unit, self.factors[name])
            for name, unit in self.units.items()
            if plan.by_name[name].unit is not None and self.factors.get(name)
        }

    def render(
        self, batch: BatchFeeds, fed: Mapping[str, Any], n_rows: int
    ) -> tuple[list[str | None], list[tuple[str, ...]]]:
        """Per row: the error text (None when scored) and the warnings, in the caller's terms."""
        errors: list[str | None] = [None] * n_rows
        for row, problems in batch.errors.items():
            errors[row] = "; ".join(self._error(e, fed, row) for e in problems)
        warnings: list[tuple[str, ...]] = [()] * n_rows
        texts: dict[InputWarning, str] = {}  # warnings are shared between rows with one value
        for row, found in batch.warnings.items():
            out = []
            for w in found:
                text = texts.get(w)
                if text is None:
                    text = texts[w] = self._warning(w, fed, row)
                out.append(text)
            warnings[row] = tuple(out)
        return errors, warnings

    def _error(self, error: FieldError, fed: Mapping[str, Any], row: int) -> str:
        column = self.column_of.get(error.field, error.field)
        view = self.views.get(error.field)
        if view is not None:
            value = _number(fed[error.field], row)
            if value is not None:
                field = self.plan.by_name[error.field]
                if field.hard is not None and error.message == field.impossible(value * self.factors[error.field]):
                    return f"{column}: {view.impossible(value)}"
        return f"{column}: {error.message}"

    def _warning(self, warning: InputWarning, fed: Mapping[str, Any], row: int) -> str:
        column = self.column_of.get(warning.field, warning.field)
        view = self.views.get(warning.field)
        if view is not None:
            value = _number(fed[warning.field], row)
            if value is not None:
                ours = self.plan.by_name[warning.field].warning_for(value * self.factors[warning.field])
                theirs = view.warning_for(value)
                if ours is not None and theirs is not None and ours.message == warning.message:
                    return f"{column}: {theirs.message}"
        return f"{column}: {warning.message}"


def _view(field: FieldPlan, column: str, unit: str, factor: float) -> FieldPlan:
    """``field`` seen through a column in ``unit``: bounds divided by the factor into that unit."""
    spec = field.spec.model_copy(
        update={
            "name": column,
            "unit": unit,
            "accepted_units": [],
            "hard_bounds": _scaled(field.spec.hard_bounds, factor),
            "population_bounds": _scaled(field.spec.population_bounds, factor),
        }
    )
    return FieldPlan(spec, field.graph_dtype)


def _scaled(bounds: Bounds | None, factor: float) -> Bounds | None:
    if bounds is None:
        return None
    return bounds.model_copy(
        update={
            "minimum": None if bounds.minimum is None else bounds.minimum / factor,
            "maximum": None if bounds.maximum is None else bounds.maximum / factor,
        }
    )


def _number(column: Any, row: int) -> float | None:
    """The caller's cell as a float, when it is a plain finite number."""
    value = column[row]
    if isinstance(value, pa.Scalar):
        value = value.as_py()
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    number = float(value)
    return number if np.isfinite(number) else None
