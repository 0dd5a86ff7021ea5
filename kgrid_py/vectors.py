"""Test vectors: the examples a KO carries to prove it computes what its sources say.

``tests.json`` holds ``{"vectors": [...]}``. A vector gives a function, an input and one of:
``expected`` outputs (numbers compared with ``rel_tol``/``abs_tol``, others exactly),
``expect_error`` (the fields the error must name), and optionally ``expect_warnings`` (the
input fields that must be warned about; ``[]`` means "no input warnings").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kgrid_py.errors import InputError, InvalidKO
from kgrid_py.inputs import MODEL_WARNING_FIELD

if TYPE_CHECKING:
    from kgrid_py.ko import KnowledgeObject

__all__ = ["TestVector", "TestVectors", "VectorOutcome", "load_vectors", "run_vectors"]


class TestVector(BaseModel):
    """One input and what the KO must answer for it."""

    __test__ = False  # not a pytest class
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    function: str
    input: dict[str, Any]
    expected: dict[str, Any] | None = None
    rel_tol: float = Field(default=1e-9, ge=0)
    abs_tol: float = Field(default=0.0, ge=0)
    expect_error: list[str] | None = Field(default=None, description="Fields the error must name")
    expect_warnings: list[str] | None = Field(
        default=None, description="Fields that must be warned about; [] means no warning"
    )
    source: str | None = Field(default=None, description="Where the expected values come from")

    @model_validator(mode="after")
    def _one_expectation(self) -> TestVector:
        if (self.expected is None) == (self.expect_error is None):
            raise ValueError(f"vector {self.name!r} needs exactly one of expected / expect_error")
        return self


class TestVectors(BaseModel):
    __test__ = False
    model_config = ConfigDict(extra="forbid", frozen=True)

    vectors: list[TestVector] = Field(min_length=1)


@dataclass(frozen=True)
class VectorOutcome:
    vector: TestVector
    passed: bool
    detail: str = ""


def load_vectors(path: Path) -> TestVectors:
    try:
        return TestVectors.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise InvalidKO(f"{path.name}: invalid test vectors: {exc}") from None


def run_vectors(ko: KnowledgeObject, vectors: TestVectors) -> list[VectorOutcome]:
    """Run every vector against ``ko`` and say which pass, never raising for a failed vector."""
    return [_run_one(ko, vector) for vector in vectors.vectors]


def _run_one(ko: KnowledgeObject, vector: TestVector) -> VectorOutcome:
    try:
        out = ko.call(vector.function, vector.input)
    except InputError as exc:
        if vector.expect_error is None:
            return VectorOutcome(vector, False, f"unexpected error: {exc}")
        named = {e.field for e in exc.errors}
        missing = [f for f in vector.expect_error if f not in named]
        if missing:
            return VectorOutcome(vector, False, f"error does not name {missing}: {exc}")
        return VectorOutcome(vector, True)
    if vector.expect_error is not None:
        return VectorOutcome(vector, False, f"expected an error naming {vector.expect_error}")
    assert vector.expected is not None
    for name, want in vector.expected.items():
        if name not in out.result:
            return VectorOutcome(vector, False, f"no output {name!r}")
        got = out.result[name]
        if not _matches(got, want, vector.rel_tol, vector.abs_tol):
            return VectorOutcome(vector, False, f"{name}: expected {want!r}, got {got!r}")
    if vector.expect_warnings is not None:
        warned = {w.field for w in out.warning_details}
        # Warnings a function attaches to every result (field "(model)") are not about the input.
        if not vector.expect_warnings and warned - {MODEL_WARNING_FIELD}:
            return VectorOutcome(vector, False, f"unexpected warnings: {out.warnings}")
        missing = [f for f in vector.expect_warnings if f not in warned]
        if missing:
            return VectorOutcome(vector, False, f"no warning for {missing}: {out.warnings}")
    return VectorOutcome(vector, True)


def _matches(got: Any, want: Any, rel_tol: float, abs_tol: float) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got == want
    if isinstance(want, int | float) and isinstance(got, int | float):
        return math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return all(_matches(g, w, rel_tol, abs_tol) for g, w in zip(got, want, strict=True))
    return got == want
