"""The ``kgrid`` command line: for developers who call KOs and curators who build them.

Exit codes: 0 success, 1 failure (invalid KO, failed vectors, bad input), 2 usage error.
Errors are one line on stderr; ``--debug`` shows the traceback. Other packages add commands
(the activator adds ``serve``) through the ``kgrid.commands`` entry-point group.
"""

from __future__ import annotations

import json
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click

from kgrid_py.errors import InputError, InvalidKO, KgridError
from kgrid_py.ko import KnowledgeObject
from kgrid_py.metadata import FieldSpec
from kgrid_py.shelf import Shelf, default_shelf_path, load, reserved_id_problem

__all__ = ["main"]


class KgridGroup(click.Group):
    """Turns library errors into one clear line and exit code 1 (traceback with ``--debug``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KgridError, OSError, json.JSONDecodeError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def _shelf_option(func: Any) -> Any:
    return click.option(
        "--shelf",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Shelf folder (default: $KGRID_SHELF, else ./knowledge_objects).",
    )(func)


def _shelf(path: Path | None) -> Path:
    return path if path is not None else default_shelf_path()


@click.group(cls=KgridGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="kgrid-py")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Load, test, run and build computable knowledge objects."""
    ctx.obj = {"debug": debug}


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
@_shelf_option
@click.option("-v", "--verbose", is_flag=True, help="List every vector.")
def test_command(ref: str, shelf: Path | None, verbose: bool) -> None:
    """Run a KO's own test vectors."""
    ko = load(ref, shelf=_shelf(shelf))
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
@_shelf_option
def info(ref: str, shelf: Path | None) -> None:
    """Show a KO's identity, status, functions and their inputs."""
    ko = load(ref, shelf=_shelf(shelf), allow_retired=True)  # describing a retired version is fine
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
@_shelf_option
def list_command(shelf: Path | None) -> None:
    """List every KO version on a shelf."""
    entries, broken = Shelf(_shelf(shelf)).scan()
    for entry in entries:
        click.echo(f"{entry.ko_id}@{entry.version}\t{entry.status}\t{entry.path}")
    for item in broken:
        click.echo(f"(broken)\t{item.path}\t{item.reason}", err=True)


@cli.command()
@click.argument("ref")
@click.argument("endpoint")
@click.option("--input", "input_", required=True, help="JSON inputs, @FILE, or - for stdin.")
@_shelf_option
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
        ko = load(ref, shelf=_shelf(shelf), allow_retired=allow_retired)
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


@cli.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--seal-only", is_flag=True, help="Only regenerate service.yaml and the digests.")
def build(path: Path, seal_only: bool) -> None:
    """Rebuild a KO's ONNX from its source (needs torch), then re-seal its metadata."""
    from kgrid_py.build import build_ko, seal

    if seal_only:
        seal(path)
        click.echo(f"{path}: sealed")
        return
    summary = build_ko(path)
    ko = KnowledgeObject.from_path(path)
    click.echo(f"{ko.ref}: built, digest {ko.content_digest}")
    if summary:
        click.echo(json.dumps(summary, indent=2, default=str))


def _add_library_commands() -> None:
    """Curator commands and population scoring live in their own modules."""
    from kgrid_py.curator_cli import COMMANDS
    from kgrid_py.score_cli import score

    for name, command in COMMANDS.items():
        cli.add_command(command, name)
    cli.add_command(score, "score")


def _add_plugin_commands() -> None:
    for entry in entry_points(group="kgrid.commands"):
        try:
            cli.add_command(entry.load(), name=entry.name)
        except ImportError as exc:  # a plugin whose own dependencies are missing
            cli.add_command(_unavailable(entry.name, str(exc)), name=entry.name)


def _unavailable(name: str, reason: str) -> click.Command:
    @click.command(name=name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"'{name}' is unavailable: {reason}")

    return command


_add_library_commands()
_add_plugin_commands()


def main() -> None:
    cli(prog_name="kgrid")
