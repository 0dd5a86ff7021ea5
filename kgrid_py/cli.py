"""The ``kgrid`` command line: for developers who call KOs and curators who build them.

Exit codes: 0 success, 1 failure (invalid KO, failed vectors, bad input), 2 usage error.
Errors are one line on stderr; ``--debug`` shows the traceback. Other packages add commands
(the activator adds ``serve``) through the ``kgrid.commands`` entry-point group.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click

from kgrid_py.errors import InputError, KgridError
from kgrid_py.ko import KnowledgeObject
from kgrid_py.shelf import Shelf, default_shelf_path, load

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
    failed = [o for o in ko.test() if not o.passed]
    if failed:
        for outcome in failed:
            click.echo(f"FAIL {outcome.vector.name}: {outcome.detail}", err=True)
        raise KgridError(f"{ko.ref}: {len(failed)} test vector(s) failed")
    click.echo(f"{ko.ref}: valid ({len(ko.functions)} function(s), digest {ko.content_digest[:12]})")


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
    ko = load(ref, shelf=_shelf(shelf))
    meta = ko.metadata
    click.echo(f"{ko.ref}  [{meta.status}]  {meta.title}")
    click.echo(f"  digest: {ko.content_digest}")
    click.echo(f"  path: {ko.path}")
    for citation in meta.citations:
        click.echo(f"  cites: doi:{citation.doi}")
    for function in meta.functions:
        click.echo(f"  {function.name}: {function.title}")
        for field in function.inputs:
            unit = f" [{field.unit}]" if field.unit else ""
            optional = "" if field.required else f" (default {field.default!r})"
            click.echo(f"    in  {field.name}: {field.type}{unit}{optional}")
        for output in function.outputs:
            unit = f" [{output.unit}]" if output.unit else ""
            click.echo(f"    out {output.name}: {output.type}{unit}")


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
def run(ref: str, endpoint: str, input_: str, shelf: Path | None) -> None:
    """Call one function and print {"result": ..., "info": ...} as JSON."""
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
    ko = load(ref, shelf=_shelf(shelf))
    try:
        if isinstance(inputs, list):
            outs = [ko.call(endpoint, item) for item in inputs]
            result: Any = [o.result for o in outs]
            warnings = [o.warnings for o in outs]
        else:
            out = ko.call(endpoint, inputs)
            result, warnings = out.result, out.warnings
    except InputError as exc:
        click.echo(json.dumps({"errors": [e.as_dict() for e in exc.errors]}), err=True)
        raise
    info = {
        "id": ko.id,
        "version": ko.version,
        "function": endpoint,
        "content_digest": ko.content_digest,
        "warnings": warnings,
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
    click.echo(f"{ko.ref}: built, digest {ko.content_digest[:12]}")
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
