"""UCUM parsing and conversion, including analyte-specific factors."""

from __future__ import annotations

import pytest

from kgrid_py.units import UnitMismatch, conversion_factor, parse_unit

CREATININE = [("umol/L", 1 / 88.4)]
UACR = [("mg/mmol", 8.84)]


@pytest.mark.parametrize(
    ("source", "target", "declared", "factor"),
    [
        ("mg/dL", "mg/dL", (), 1.0),
        ("g/L", "g/dL", (), 0.1),
        ("mg/L", "mg/dL", (), 0.1),
        ("cm", "m", (), 0.01),
        ("mL/min/{1.73_m2}", "L/h/{1.73_m2}", (), 0.06),
        ("umol/L", "mg/dL", CREATININE, 1 / 88.4),
        ("mmol/L", "mg/dL", CREATININE, 1000 / 88.4),  # chained: mmol/L -> umol/L -> mg/dL
        ("mg/mmol", "mg/g", UACR, 8.84),
        ("g/mol", "mg/g", UACR, 8.84),  # g/mol == mg/mmol dimensionally
        ("meq/L", "mmol/L", [("meq/L", 1.0)], 1.0),  # only where the field declares it (monovalent)
        ("kg/m2", "g/cm2", (), 0.1),
    ],
)
def test_conversions(source: str, target: str, declared, factor: float) -> None:
    assert conversion_factor(source, target, declared) == pytest.approx(factor, rel=1e-12)


@pytest.mark.parametrize(
    ("source", "target", "declared"),
    [
        ("mmol/mol", "mg/dL", CREATININE),  # creatinine in a ratio unit: wrong dimension
        ("umol/L", "mg/dL", ()),  # no molar mass declared: refuse rather than guess
        ("mL/min", "mL/min/{1.73_m2}", ()),  # annotations matter: not body-surface normalised
        ("kg", "m", ()),
        ("mmol/mol", "mg/g", ()),  # a molar ratio is not a mass ratio, though both are "1" in UCUM
        ("mmol/mol", "mg/g", UACR),
    ],
)
def test_incompatible(source: str, target: str, declared) -> None:
    with pytest.raises(UnitMismatch):
        conversion_factor(source, target, declared)


@pytest.mark.parametrize("text", ["", " mg", "mg//dL", "zz/L", "mg/{x", "Mg/dL", "a99999999", "kg9999/g", "meq/L"])
def test_unparseable(text: str) -> None:
    with pytest.raises(UnitMismatch):
        parse_unit(text)


def test_dimension_of_egfr_unit() -> None:
    unit = parse_unit("mL/min/{1.73_m2}")
    assert dict(unit.dimension) == {"L": 3, "/T": 1, "/{1.73_m2}": 1}


def test_equivalents_are_not_moles() -> None:
    """1 meq of calcium is 0.5 mmol: equivalents convert only where a field declares them."""
    with pytest.raises(UnitMismatch):
        conversion_factor("meq/L", "mg/dL", [("mmol/L", 4.008)])
