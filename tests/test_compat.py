"""Semantic-version checks between a KO version and the one before it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from demo_ko import metadata

from kgrid_py.curation.compat import check_version, compare, needs_major
from kgrid_py.curation.errors import IncompatibleChange
from kgrid_py.metadata import KOMetadata


def meta(version: str = "1.0.0", edit: Callable[[dict[str, Any]], None] | None = None) -> KOMetadata:
    raw = copy.deepcopy(metadata(version))
    if edit is not None:
        edit(raw)
    return KOMetadata.model_validate(raw)


def _inputs(raw: dict[str, Any]) -> list[dict[str, Any]]:
    return raw["functions"][0]["inputs"]


def _field(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in _inputs(raw) if f["name"] == name)


def remove_height(raw: dict[str, Any]) -> None:
    raw["functions"][0]["inputs"] = [f for f in _inputs(raw) if f["name"] != "height"]


def rename_height(raw: dict[str, Any]) -> None:
    _field(raw, "height").update(name="body_height", graph_input="height")


def remove_output(raw: dict[str, Any]) -> None:
    raw["functions"][0]["outputs"] = raw["functions"][0]["outputs"][:-1]


def weight_in_grams(raw: dict[str, Any]) -> None:
    _field(raw, "weight").update(unit="g", accepted_units=[])


def output_unit(raw: dict[str, Any]) -> None:
    raw["functions"][0]["outputs"][0]["unit"] = "kg/m3"


def smoker_required(raw: dict[str, Any]) -> None:
    _field(raw, "smoker").update(required=True, default=None)


def new_required_input(raw: dict[str, Any]) -> None:
    _inputs(raw).append({"name": "waist", "type": "number", "description": "Waist.", "unit": "cm"})


def drop_enum_value(raw: dict[str, Any]) -> None:
    _field(raw, "sex")["enum"] = ["female"]


def rename_function(raw: dict[str, Any]) -> None:
    raw["functions"][0]["name"] = "body-mass-index"


BREAKING = [
    pytest.param(remove_height, "input 'height' removed or renamed", id="input-removed"),
    pytest.param(rename_height, "input 'height' renamed to 'body_height'", id="input-renamed"),
    pytest.param(remove_output, "output 'obese' removed or renamed", id="output-removed"),
    pytest.param(weight_in_grams, "input 'weight' unit changed from 'kg' to 'g'", id="input-unit"),
    pytest.param(output_unit, "output 'bmi' unit changed from 'kg/m2' to 'kg/m3'", id="output-unit"),
    pytest.param(smoker_required, "input 'smoker' changed from optional to required", id="optional-to-required"),
    pytest.param(new_required_input, "new required input 'waist'", id="new-required-input"),
    pytest.param(drop_enum_value, "input 'sex' no longer accepts ['male']", id="enum-value-dropped"),
    pytest.param(rename_function, "bmi: function removed or renamed", id="function-renamed"),
]


@pytest.mark.parametrize(("edit", "message"), BREAKING)
def test_breaking_change_in_a_minor_is_refused(edit: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(IncompatibleChange) as caught:
        check_version(meta(), meta("1.1.0", edit))
    assert message in str(caught.value)
    assert "needs a new major version (2.0.0 or later)" in str(caught.value)
    assert any(message in str(c) for c in caught.value.changes)


@pytest.mark.parametrize(("edit", "message"), BREAKING)
def test_breaking_change_in_a_major_is_accepted(edit: Callable[[dict[str, Any]], None], message: str) -> None:
    changes = check_version(meta(), meta("2.0.0", edit))
    assert any(c.breaking and message in str(c) for c in changes)


def test_additions_are_not_breaking() -> None:
    def add(raw: dict[str, Any]) -> None:
        _inputs(raw).append({"name": "waist", "type": "number", "description": "W.", "required": False})
        _field(raw, "sex")["enum"] = ["female", "male", "other"]
        raw["functions"][0]["outputs"].append({"name": "extra", "type": "number", "description": "E."})
        _field(raw, "age")["population_bounds"] = {"minimum": 18, "maximum": 100}

    changes = check_version(meta(), meta("1.1.0", add))
    assert [str(c) for c in changes] == [
        "bmi: input 'sex' now also accepts ['other']",
        "bmi: new optional input 'waist'",
        "bmi: output 'extra' added",
    ]
    assert not any(c.breaking for c in changes)


def test_no_previous_version() -> None:
    assert check_version(None, meta()) == []


def test_identical_interfaces() -> None:
    assert compare(meta(), meta("1.0.1")) == []


@pytest.mark.parametrize(
    ("old", "new", "needed"),
    [("1.0.0", "1.1.0", True), ("1.2.0", "2.0.0", False), ("0.1.0", "0.1.5", True), ("0.1.0", "0.2.0", False)],
)
def test_needs_major(old: str, new: str, needed: bool) -> None:
    assert needs_major(old, new) is needed


def test_zero_major_versions_break_on_a_minor() -> None:
    with pytest.raises(IncompatibleChange, match=r"0\.2\.0 or later"):
        check_version(meta("0.1.0"), meta("0.1.1", remove_height))
    assert check_version(meta("0.1.0"), meta("0.2.0", remove_height))
