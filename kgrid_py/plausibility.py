"""Plausibility of results: a number a function returns outside its declared plausible range.

Inputs are checked in :mod:`kgrid_py.inputs` (hard bounds, intended population, likely unit
slips); a result can still be implausible when every input passed, e.g. a creatinine of 1.2
sent as umol/L instead of mg/dL gives an eGFR above 300. An output's ``plausible_bounds`` turn
such a result into a warning on the result, never a silent number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kgrid_py.inputs import InputWarning
from kgrid_py.metadata import OutputSpec

__all__ = ["OutputChecks"]


class OutputChecks:
    """The plausibility checks of one function's outputs, compiled once."""

    def __init__(self, outputs: Sequence[OutputSpec]) -> None:
        self.checked = [o for o in outputs if o.plausible_bounds is not None]

    def __bool__(self) -> bool:
        return bool(self.checked)

    def warning_for(self, spec: OutputSpec, value: float) -> InputWarning | None:
        bounds = spec.plausible_bounds
        if bounds is None or bounds.contains(value):
            return None
        unit = f" {spec.unit}" if spec.unit and spec.unit != "1" else ""
        note = f" {spec.plausibility_note}" if spec.plausibility_note else ""
        return InputWarning(
            spec.name,
            f"the result {value:g}{unit} is outside the plausible range ({bounds.describe()}); "
            f"check the inputs and their units before using it.{note}",
        )

    def one(self, result: Mapping[str, Any]) -> list[InputWarning]:
        """Warnings about one call's result."""
        found = (self.warning_for(spec, float(result[spec.name])) for spec in self.checked)
        return [w for w in found if w is not None]

    def batch(self, columns: Mapping[str, np.ndarray]) -> dict[int, list[InputWarning]]:
        """Warnings per row of a batch's output columns (NaN, an unscored row, is never warned)."""
        warnings: dict[int, list[InputWarning]] = {}
        for spec in self.checked:
            column = np.asarray(columns[spec.name], dtype=np.float64)
            bounds = spec.plausible_bounds
            assert bounds is not None
            outside = np.zeros(column.shape, dtype=bool)
            with np.errstate(invalid="ignore"):
                if bounds.minimum is not None:
                    outside |= column <= bounds.minimum if bounds.exclusive_minimum else column < bounds.minimum
                if bounds.maximum is not None:
                    outside |= column >= bounds.maximum if bounds.exclusive_maximum else column > bounds.maximum
            made: dict[float, InputWarning | None] = {}
            rows = np.flatnonzero(outside)
            for row, value in zip(rows.tolist(), column[rows].tolist(), strict=True):
                if value not in made:
                    made[value] = self.warning_for(spec, value)
                warning = made[value]
                if warning is not None:
                    warnings.setdefault(row, []).append(warning)
        return warnings
