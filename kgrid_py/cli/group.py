"""The ``kgrid`` group itself: one error line and exit code 1 for library errors, and the shared options.

Every command module registers on :data:`cli`; :mod:`kgrid_py.cli` imports them all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kgrid_py.errors import KgridError
from kgrid_py.shelf import default_shelf_path

__all__ = ["KgridGroup", "cli", "shelf_option", "shelf_or_default"]


class KgridGroup(click.Group):
    """Turns library errors into one clear line and exit code 1 (traceback with ``--debug``).

    Commands can also be registered lazily (:meth:`add_lazy_command`): their module is imported
    only when the command runs or help lists it, so ``kgrid federate site`` on a schedule does not
    pay for matplotlib, scipy or the activator at every start.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, Callable[[], click.Command]] = {}

    def add_lazy_command(self, name: str, load: Callable[[], click.Command]) -> None:
        self.lazy[name] = load

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self.lazy.pop(cmd_name)(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KgridError, OSError, json.JSONDecodeError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def shelf_option(func: Any) -> Any:
    return click.option(
        "--shelf",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Shelf folder (default: $KGRID_SHELF, else ./knowledge_objects).",
    )(func)


def shelf_or_default(path: Path | None) -> Path:
    return path if path is not None else default_shelf_path()


@click.group(cls=KgridGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="kgrid-py")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Load, test, run and build computable knowledge objects."""
    ctx.obj = {"debug": debug}
