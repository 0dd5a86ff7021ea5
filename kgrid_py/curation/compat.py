"""Semantic-version checks: does a new KO version break callers of the one before it?

Breaking (needs a new major version): a function removed; an input or output removed or
renamed; an input's or output's unit, type or tensor shape changed; an optional input made
required, or a new required input; an enum input losing a value; an enum output changing its
labels. Everything else (new functions, new optional inputs, new outputs, new enum values on
an input, wider bounds, new descriptions) fits in a minor or patch release. For 0.y.z versions
a new minor counts as a new major, as npm's caret ranges treat it.
"""

from __future__ import annotations

from dataclasses import dataclass

import semantic_version

from kgrid_py.curation.errors import IncompatibleChange
from kgrid_py.metadata import FieldSpec, FunctionSpec, KOMetadata, OutputSpec

__all__ = ["Change", "check_version", "compare", "needs_major"]


@dataclass(frozen=True)
class Change:
    """One difference between two versions' interfaces."""

    function: str
    detail: str
    breaking: bool

    def __str__(self) -> str:
        return f"{self.function}: {self.detail}"


def compare(old: KOMetadata, new: KOMetadata) -> list[Change]:
    """Every interface change from ``old`` to ``new``, breaking ones first."""
    changes: list[Change] = []
    new_functions = {f.name: f for f in new.functions}
    for before in old.functions:
        after = new_functions.get(before.name)
        if after is None:
            changes.append(Change(before.name, "function removed or renamed", True))
        else:
            changes.extend(_compare_function(before, after))
    old_names = {f.name for f in old.functions}
    changes.extend(Change(f.name, "function added", False) for f in new.functions if f.name not in old_names)
    return sorted(changes, key=lambda c: not c.breaking)


def _compare_function(old: FunctionSpec, new: FunctionSpec) -> list[Change]:
    name = old.name
    changes: list[Change] = []
    new_inputs = {f.name: f for f in new.inputs}
    old_inputs = {f.name for f in old.inputs}
    added = {f.graph_name: f.name for f in new.inputs if f.name not in old_inputs}
    renamed: set[str] = set()
    for before in old.inputs:
        after = new_inputs.get(before.name)
        if after is None:
            successor = added.get(before.graph_name)
            if successor is not None:  # same graph input under a new name
                renamed.add(successor)
                changes.append(Change(name, f"input {before.name!r} renamed to {successor!r}", True))
            else:
                changes.append(Change(name, f"input {before.name!r} removed or renamed", True))
            continue
        changes.extend(_compare_input(name, before, after))
    for after in new.inputs:
        if after.name not in old_inputs and after.name not in renamed:
            if after.required:
                changes.append(Change(name, f"new required input {after.name!r}", True))
            else:
                changes.append(Change(name, f"new optional input {after.name!r}", False))
    new_outputs = {o.name: o for o in new.outputs}
    for before in old.outputs:
        after = new_outputs.get(before.name)
        if after is None:
            changes.append(Change(name, f"output {before.name!r} removed or renamed", True))
            continue
        changes.extend(_compare_output(name, before, after))
    old_outputs = {o.name for o in old.outputs}
    changes.extend(Change(name, f"output {o.name!r} added", False) for o in new.outputs if o.name not in old_outputs)
    return changes


def _compare_input(function: str, old: FieldSpec, new: FieldSpec) -> list[Change]:
    label = f"input {old.name!r}"
    changes = _compare_common(function, label, old.type, new.type, old.unit, new.unit, old.shape, new.shape)
    if new.dtype != old.dtype:
        changes.append(Change(function, f"{label} dtype changed from {old.dtype} to {new.dtype}", True))
    if new.required and not old.required:
        changes.append(Change(function, f"{label} changed from optional to required", True))
    if old.enum and new.enum:
        lost = [v for v in old.enum if v not in new.enum]
        if lost:
            changes.append(Change(function, f"{label} no longer accepts {lost}", True))
        gained = [v for v in new.enum if v not in old.enum]
        if gained:
            changes.append(Change(function, f"{label} now also accepts {gained}", False))
    if not new.required and old.required:
        changes.append(Change(function, f"{label} changed from required to optional", False))
    return changes


def _compare_output(function: str, old: OutputSpec, new: OutputSpec) -> list[Change]:
    label = f"output {old.name!r}"
    changes = _compare_common(function, label, old.type, new.type, old.unit, new.unit, old.shape, new.shape)
    if old.enum != new.enum and old.type == new.type == "enum":
        changes.append(Change(function, f"{label} labels changed from {old.enum} to {new.enum}", True))
    return changes


def _compare_common(
    function: str,
    label: str,
    old_type: str,
    new_type: str,
    old_unit: str | None,
    new_unit: str | None,
    old_shape: list[int] | None,
    new_shape: list[int] | None,
) -> list[Change]:
    changes = []
    if old_type != new_type:
        changes.append(Change(function, f"{label} type changed from {old_type} to {new_type}", True))
    if old_unit != new_unit:
        changes.append(Change(function, f"{label} unit changed from {old_unit!r} to {new_unit!r}", True))
    if old_shape != new_shape:
        changes.append(Change(function, f"{label} shape changed from {old_shape} to {new_shape}", True))
    return changes


def needs_major(old_version: str, new_version: str) -> bool:
    """Whether going from ``old_version`` to ``new_version`` is *not* a breaking-allowed bump."""
    old, new = semantic_version.Version(old_version), semantic_version.Version(new_version)
    if new.major != old.major:
        return False
    return not (old.major == 0 and new.minor != old.minor)


def check_version(previous: KOMetadata | None, new: KOMetadata) -> list[Change]:
    """Refuse breaking changes from ``previous`` unless ``new`` bumps the major version.

    Returns every change found (for the audit and the publish report). Raises
    :class:`IncompatibleChange` naming each breaking change and the version it needs.
    """
    if previous is None:
        return []
    changes = compare(previous, new)
    breaking = [c for c in changes if c.breaking]
    if breaking and needs_major(previous.version, new.version):
        old = semantic_version.Version(previous.version)
        wanted = f"{old.major + 1}.0.0" if old.major else f"0.{old.minor + 1}.0"
        listing = "; ".join(str(c) for c in breaking)
        raise IncompatibleChange(
            f"{new.identifier} {new.version} breaks {previous.version} ({listing}): "
            f"a breaking change needs a new major version ({wanted} or later)",
            breaking,
        )
    return changes
