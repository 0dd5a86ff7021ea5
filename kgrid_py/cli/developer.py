"""``kgrid`` commands for developers who call KOs: validate, test, info, list, run."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from kgrid_py import load
from kgrid_py.cli.group import cli, shelf_option, shelf_or_default
from kgrid_py.errors import InputError, InvalidKO, KgridError
from kgrid_py.ko import KnowledgeObject
from kgrid_py.metadata import FieldSpec
from kgrid_py.shelf import Shelf, reserved_id_problem

__all__ = ["info", "list_command", "run", "test_command", "validate"]


@cli.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def validate(path: Path) -> None:
    """Check a KO folder: schema, digests, graphs and its own test vectors."""
    ko = KnowledgeObject.from_path(path)
    reserved = reserved_id_problem(ko.id)
    if reserved:
        raise InvalidKO(reserved)
    failed = [o for o in ko.test() if not o.passed]
    if failed:
        for outcome in failed:
            click.echo(f"FAIL {outcome.vector.name}: {outcome.detail}", err=True)
        raise KgridError(f"{ko.ref}: {len(failed)} test vector(s) failed")
    click.echo(f"{ko.ref}: valid ({len(ko.functions)} function(s)), digest {ko.content_digest}")


@cli.command(name="test")
@click.argument("ref")
@shelf_option
@click.option("-v", "--verbose", is_flag=True, help="List every vector.")
def test_command(ref: str, shelf: Path | None, verbose: bool) -> None:
    """Run a KO's own test vectors."""
    ko = load(ref, shelf=shelf_or_default(shelf))
    outcomes = ko.test()
    failed = [o for o in outcomes if not o.passed]
    for outcome in outcomes:
        if verbose or not outcome.passed:
            mark = "ok  " if outcome.passed else "FAIL"
            click.echo(f"{mark} {outcome.vector.name}" + (f": {outcome.detail}" if outcome.detail else ""))
    click.echo(f"{ko.ref}: {len(outcomes) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("ref")
@shelf_option
def info(ref: str, shelf: Path | None) -> None:
    """Show a KO's identity, status, functions and their inputs."""
    ko = load(ref, shelf=shelf_or_default(shelf), allow_retired=True)  # describing a retired version is fine
    meta = ko.metadata
    click.echo(f"{ko.ref}  [{meta.status}]  {meta.title}")
    if meta.successor:
        click.echo(f"  successor: {meta.successor}")
    click.echo(f"  digest: {ko.content_digest}")
    click.echo(f"  path: {ko.path}")
    for citation in meta.citations:
        click.echo(f"  cites: doi:{citation.doi}")
    for function in meta.functions:
        click.echo(f"  {function.name}: {function.title}")
        for field in function.inputs:
            click.echo(f"    in  {field.name}: {_describe_input(field)}")
        for output in function.outputs:
            unit = f" [{output.unit}]" if output.unit else ""
            labels = f" one of {output.enum}" if output.enum else ""
            click.echo(f"    out {output.name}: {output.type}{unit}{labels}")


def _describe_input(field: FieldSpec) -> str:
    """Type, unit and accepted units, allowed values, bounds and default: what a caller must send."""
    text = field.type
    if field.type == "tensor":
        text += f" {field.dtype} {field.shape}"
    if field.unit:
        text += f" [{field.unit}]"
    if field.accepted_units:
        text += " (also accepts " + ", ".join(u.unit for u in field.accepted_units) + ")"
    if field.enum:
        text += f" one of {field.enum}"
    if field.hard_bounds:
        text += f"; valid {field.hard_bounds.describe()}"
    if field.population_bounds:
        text += f"; intended population {field.population_bounds.describe()}"
    text += "; required" if field.required else f"; optional, default {field.default!r}"
    return text


@cli.command(name="list")
@shelf_option
def list_command(shelf: Path | None) -> None:
    """List every KO version on a shelf."""
    entries, broken = Shelf(shelf_or_default(shelf)).scan()
    for entry in entries:
        click.echo(f"{entry.ko_id}@{entry.version}\t{entry.status}\t{entry.path}")
    for item in broken:
        click.echo(f"(broken)\t{item.path}\t{item.reason}", err=True)


@cli.command()
@click.argument("ref")
@click.argument("endpoint")
@click.option("--input", "input_", required=True, help="JSON inputs, @FILE, or - for stdin.")
@shelf_option
@click.option("--allow-retired", is_flag=True, help="Run a retired version anyway (e.g. to reproduce an old result).")
def run(ref: str, endpoint: str, input_: str, shelf: Path | None, allow_retired: bool) -> None:
    """Call one function and print {"result": ..., "info": ...} as JSON.

    A retired version is refused (exit 1, naming its successor) unless --allow-retired; a
    deprecated one runs, with a warning on stderr and in the result's warnings.
    """
    if input_ == "-":
        text = sys.stdin.read()
    elif input_.startswith("@"):
        text = Path(input_[1:]).read_text(encoding="utf-8")
    else:
        text = input_
    try:
        inputs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--input is not valid JSON: {exc}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # said once, on stderr, below
        ko = load(ref, shelf=shelf_or_default(shelf), allow_retired=allow_retired)
    if ko.deprecation:
        click.echo(f"warning: {ko.deprecation}", err=True)
    elif ko.status == "retired":
        click.echo(f"warning: {ko.ref} is retired; run only because --allow-retired was given", err=True)
    try:
        if isinstance(inputs, list):
            outs = [ko.call(endpoint, item) for item in inputs]
            result: Any = [o.result for o in outs]
            result_warnings = [o.warnings for o in outs]
        else:
            out = ko.call(endpoint, inputs)
            result, result_warnings = out.result, out.warnings
    except InputError as exc:
        click.echo(json.dumps({"errors": [e.as_dict() for e in exc.errors]}), err=True)
        raise
    info = {
        "id": ko.id,
        "version": ko.version,
        "function": endpoint,
        "content_digest": ko.content_digest,
        "warnings": result_warnings,
    }
    click.echo(json.dumps({"result": result, "info": info}, indent=2))
