"""OpenAPI 3.1 descriptions generated from a KO's function declarations (``service.yaml``)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from kgrid_py.metadata import Bounds, FieldSpec, FunctionSpec, KOMetadata, OutputSpec
from kgrid_py.units import MAX_UNIT_LENGTH

__all__ = ["accepted_spellings", "field_schema", "input_schema", "output_schema", "service_spec", "service_yaml"]

_JSON_TYPES = {"number": "number", "integer": "integer", "boolean": "boolean", "enum": "string"}


def _with_bounds(schema: dict[str, Any], bounds: Bounds | None) -> dict[str, Any]:
    if bounds is not None:
        if bounds.minimum is not None:
            schema["exclusiveMinimum" if bounds.exclusive_minimum else "minimum"] = bounds.minimum
        if bounds.maximum is not None:
            schema["exclusiveMaximum" if bounds.exclusive_maximum else "maximum"] = bounds.maximum
    return schema


# The micro signs the unit parser reads as UCUM's "u" (µ MICRO SIGN, μ GREEK SMALL LETTER MU).
_MICRO = ("\u00b5", "\u03bc")
_ANY_MICRO = re.compile("[\u00b5\u03bc]")
_MICRO_PREFIX = re.compile(r"(?:^|(?<=[/.]))u(?=[a-zA-Z])")  # "u" opening an atom: umol/L, mg/ug


def accepted_spellings(spec: FieldSpec) -> list[str]:
    """Every unit spelling the input is documented to accept: its unit, the metadata's accepted units,
    and each with a micro sign where UCUM writes ``u`` (``umol/L`` is also ``µmol/L``)."""
    if not spec.unit:
        return []
    spellings: list[str] = []
    for unit in [spec.unit, *(u.unit for u in spec.accepted_units)]:
        ascii_unit = _ANY_MICRO.sub("u", unit)
        for spelling in (unit, ascii_unit, *(_MICRO_PREFIX.sub(m, ascii_unit) for m in _MICRO)):
            if spelling not in spellings:
                spellings.append(spelling)
    return spellings


def field_schema(spec: FieldSpec) -> dict[str, Any]:
    """JSON Schema of one input: the plain value, or ``{value, unit}`` for a quantity."""
    description = spec.description + (f" Unit: {spec.unit} (UCUM)." if spec.unit else "")
    if spec.population_bounds is not None:
        description += (
            f" Intended population: {spec.population_bounds.describe()}; outside it the result carries a warning."
        )
    if spec.type == "tensor":
        schema: dict[str, Any] = {"description": description + f" Shape {spec.shape}, {spec.dtype}."}
        schema["type"] = "string" if spec.preprocessing else "array"
        return schema
    plain: dict[str, Any] = {"type": _JSON_TYPES[spec.type]}
    if spec.enum:
        plain["enum"] = list(spec.enum)
    if spec.type in ("number", "integer"):
        # Hard bounds apply after unit conversion, so only a value in the declared unit is bounded here.
        plain = _with_bounds(plain, spec.hard_bounds)
        units = accepted_spellings(spec)
        if units:
            unit_schema = {
                "type": "string",
                "enum": units,
                "maxLength": MAX_UNIT_LENGTH,
                "description": f"Any of these; other UCUM units of the same dimension as {spec.unit} are converted "
                "too. Hard bounds apply after conversion.",
            }
            quantity = {
                "type": "object",
                "properties": {"value": {"type": "number"}, "unit": unit_schema},
                "required": ["value"],
                "additionalProperties": False,
            }
            return {"description": description, "oneOf": [plain, quantity]}
    if spec.default is not None:
        plain["default"] = spec.default
    return {"description": description, **plain}


def input_schema(function: FunctionSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.name: field_schema(f) for f in function.inputs},
        "required": [f.name for f in function.inputs if f.required],
        "additionalProperties": False,
    }


def _output_field(spec: OutputSpec) -> dict[str, Any]:
    description = spec.description + (f" Unit: {spec.unit} (UCUM)." if spec.unit else "")
    if spec.type == "tensor":
        return {"type": "array", "description": description}
    schema: dict[str, Any] = {"type": _JSON_TYPES[spec.type], "description": description}
    if spec.enum:
        schema["enum"] = list(spec.enum)
    return schema


def output_schema(function: FunctionSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {o.name: _output_field(o) for o in function.outputs},
        "required": [o.name for o in function.outputs],
    }


def service_spec(metadata: KOMetadata) -> dict[str, Any]:
    """The KO's OpenAPI 3.1 document: one POST per function, relative to the KO's base path."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for function in metadata.functions:
        name = function.name
        schemas[f"{name}-input"] = input_schema(function)
        schemas[f"{name}-output"] = output_schema(function)
        paths[f"/{name}"] = {
            "post": {
                "operationId": f"{metadata.identifier}-{metadata.version}-{name}".replace(".", "_"),
                "summary": function.title,
                "description": function.description,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}-input"}}},
                },
                "responses": {
                    "200": {
                        "description": "The result, with the KO's identity and any warnings in info.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "result": {"$ref": f"#/components/schemas/{name}-output"},
                                        "info": {"type": "object"},
                                    },
                                    "required": ["result", "info"],
                                }
                            }
                        },
                    },
                    "422": {"description": "Invalid input: one entry per field (RFC 9457 problem)."},
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": metadata.title,
            "version": metadata.version,
            "description": metadata.description,
            "license": {"name": metadata.license},
        },
        "servers": [{"url": f"/{metadata.identifier}/{metadata.version}"}],
        "paths": paths,
        "components": {"schemas": schemas},
    }


def service_yaml(metadata: KOMetadata) -> str:
    return yaml.safe_dump(service_spec(metadata), sort_keys=False, allow_unicode=True)
