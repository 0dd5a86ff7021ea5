"""UCUM units: parse the common clinical subset and convert between commensurable units.

Equivalents (``eq``) are deliberately not an atom: 1 meq is 1 mmol only for a monovalent ion,
so a field that takes ``meq/L`` declares it (bicarbonate), and calcium in ``meq/L`` is refused
rather than silently read as mmol/L.

Only multiplicative conversions exist here. A conversion that needs a molar mass (creatinine
umol/L to mg/dL) is analyte-specific, so the KO declares it with the conventional factor
(``FieldSpec.accepted_units``); :func:`conversion_factor` chains a plain dimensional conversion
onto such a declared unit, so ``mmol/L`` creatinine works once ``umol/L`` is declared.

Units come from callers (JSON bodies, batch columns, FHIR quantities), so parsing is linear in the
text and a unit longer than :data:`MAX_UNIT_LENGTH` characters is refused before it is read. The
micro sign (U+00B5) and Greek mu (U+03BC), as labs print ``µmol/L``, are the UCUM prefix ``u``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from kgrid_py.errors import KgridError

__all__ = [
    "MAX_UNIT_LENGTH",
    "Unit",
    "UnitMismatch",
    "UnitTooLong",
    "conversion_factor",
    "normalize_unit",
    "parse_unit",
]

MAX_UNIT_LENGTH = 64
"""The longest unit expression accepted; clinical units are a dozen characters."""
_MICRO_SIGNS = str.maketrans({"\u00b5": "u", "\u03bc": "u"})

_PREFIXES = {
    "k": 1e3,
    "h": 1e2,
    "da": 1e1,
    "d": 1e-1,
    "c": 1e-2,
    "m": 1e-3,
    "u": 1e-6,
    "n": 1e-9,
    "p": 1e-12,
    "f": 1e-15,
}
# atom -> (factor in base units, dimension exponents)
_ATOMS: dict[str, tuple[float, dict[str, int]]] = {
    "g": (1.0, {"M": 1}),
    "mol": (1.0, {"N": 1}),
    "m": (1.0, {"L": 1}),
    "L": (1e-3, {"L": 3}),
    "l": (1e-3, {"L": 3}),
    "s": (1.0, {"T": 1}),
    "min": (60.0, {"T": 1}),
    "h": (3600.0, {"T": 1}),
    "d": (86400.0, {"T": 1}),
    "wk": (604800.0, {"T": 1}),
    "mo": (2629800.0, {"T": 1}),
    "a": (31557600.0, {"T": 1}),
    "%": (0.01, {}),
    "1": (1.0, {}),
}
_MAX_EXPONENT = 6
_UNPREFIXABLE = {"%", "1", "min", "h", "d", "wk", "mo", "a"}
_COMPONENT = re.compile(r"^(?P<body>\{[^{}]*\}|[A-Za-z%]+|1)(?P<exp>-?\d+)?$")


class UnitMismatch(KgridError, ValueError):
    """Raised when a unit cannot be parsed or converted to the one asked for."""


class UnitTooLong(UnitMismatch):
    """Raised when a unit expression is longer than :data:`MAX_UNIT_LENGTH` (never parsed)."""


@dataclass(frozen=True)
class Unit:
    """A parsed UCUM unit: a factor to base units and its dimension (annotations count)."""

    text: str
    factor: float
    dimension: tuple[tuple[str, int], ...]  # numerator and denominator kept apart: see parse_unit


def _atom(symbol: str) -> tuple[float, dict[str, int]]:
    if symbol in _ATOMS:
        return _ATOMS[symbol]
    for prefix in sorted(_PREFIXES, key=len, reverse=True):
        rest = symbol[len(prefix) :]
        if symbol.startswith(prefix) and rest in _ATOMS and rest not in _UNPREFIXABLE:
            factor, dims = _ATOMS[rest]
            return _PREFIXES[prefix] * factor, dims
    raise UnitMismatch(f"unknown unit symbol {symbol!r}")


def normalize_unit(text: str) -> str:
    """``text`` with micro signs as UCUM's ``u``; :class:`UnitTooLong` past :data:`MAX_UNIT_LENGTH`.

    The message never quotes the text: a hostile unit may be megabytes long.
    """
    if len(text) > MAX_UNIT_LENGTH:
        raise UnitTooLong(f"unit is {len(text)} characters long; a UCUM unit has at most {MAX_UNIT_LENGTH}")
    return text.translate(_MICRO_SIGNS)


def parse_unit(text: str) -> Unit:
    """Parse a UCUM expression such as ``mg/dL``, ``umol/L``, ``µmol/L`` or ``mL/min/{1.73_m2}``."""
    return _parse(normalize_unit(text))


def _split(text: str) -> list[str]:
    """Components and the operators between them, in one pass: "mL/min/{1.73_m2}" -> mL, /, min, /, {..}.

    A ``.`` or ``/`` inside an annotation (``{1.73_m2}``) is part of it, not an operator.
    """
    tokens: list[str] = []
    start = 0
    in_annotation = False
    for index, char in enumerate(text):
        if char == "{":
            in_annotation = True
        elif char == "}":
            in_annotation = False
        elif char in "./" and not in_annotation:
            tokens += [text[start:index], char]
            start = index + 1
    tokens.append(text[start:])
    return tokens


@lru_cache(maxsize=512)
def _parse(text: str) -> Unit:
    if not text or text != text.strip():
        raise UnitMismatch(f"invalid unit {text!r}")
    factor = 1.0
    dims: dict[str, int] = {}
    sign = 1
    for index, token in enumerate(_split(text)):
        if index % 2:
            sign = -1 if token == "/" else 1
            continue
        match = _COMPONENT.match(token)
        if not match:
            raise UnitMismatch(f"invalid unit {text!r} (at {token!r})")
        body, exp = match["body"], int(match["exp"] or 1)
        if body.startswith("{"):
            atom_factor, atom_dims = 1.0, {body: 1}
        else:
            atom_factor, atom_dims = _atom(body)
        if not -_MAX_EXPONENT <= exp <= _MAX_EXPONENT:
            raise UnitMismatch(f"invalid unit {text!r} (exponent {exp} out of range)")
        factor *= atom_factor ** (sign * exp)
        for dim, power in atom_dims.items():
            # Keep numerator and denominator apart, so that a mass ratio (mg/g) never passes for a
            # molar ratio (mmol/mol): both reduce to "1" in UCUM, but they are different quantities.
            key = dim if sign > 0 else f"/{dim}"
            dims[key] = dims.get(key, 0) + exp * power
    dimension = tuple(sorted(dims.items()))
    return Unit(text, factor, dimension)


def _dimensional_factor(source: str, target: str) -> float | None:
    a, b = parse_unit(source), parse_unit(target)
    return a.factor / b.factor if a.dimension == b.dimension else None


def conversion_factor(source: str, target: str, declared: Iterable[tuple[str, float]] = ()) -> float:
    """The factor that turns a value in ``source`` into one in ``target``.

    ``declared`` lists analyte-specific units as ``(unit, factor_to_target)``; they are tried
    after plain dimensional conversion, each possibly preceded by a dimensional step.
    Raises :class:`UnitMismatch` (:class:`UnitTooLong` for an over-long unit) when none applies.
    """
    source, target = normalize_unit(source), normalize_unit(target)
    if source == target:
        return 1.0
    declared = [(normalize_unit(unit), factor) for unit, factor in declared]
    for unit, factor in declared:
        if unit == source:
            return factor
    direct = _dimensional_factor(source, target)
    if direct is not None:
        return direct
    for unit, factor in declared:
        try:
            step = _dimensional_factor(source, unit)
        except UnitMismatch:  # a declared unit outside our UCUM subset converts only as itself
            continue
        if step is not None:
            return step * factor
    raise UnitMismatch(f"cannot convert {source!r} to {target!r}")
