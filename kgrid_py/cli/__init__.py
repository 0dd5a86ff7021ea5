"""The ``kgrid`` command line: one module per command group, each thin over the library.

- :mod:`~kgrid_py.cli.developer`: validate, test, info, list, run;
- :mod:`~kgrid_py.cli.curator`: init, build, vectors, pack, keygen, token, sign, verify, publish, status;
- :mod:`~kgrid_py.cli.population`: score;
- :mod:`~kgrid_py.cli.monitoring`: outcomes import, monitor (exit 3 on an alert);
- :mod:`~kgrid_py.cli.learning`: capture export, capture prune.

Exit codes: 0 success, 1 failure (invalid KO, failed vectors, bad input), 2 usage error.
Errors are one line on stderr; ``--debug`` shows the traceback. Other packages add commands
(the activator adds ``serve``) through the ``kgrid.commands`` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

import click

from kgrid_py.cli import developer  # noqa: F401  (registers its commands on the group)
from kgrid_py.cli.group import cli

__all__ = ["cli", "main"]

# Name -> (module, attribute): imported when the command is used, not at every start.
_LIBRARY_COMMANDS = {
    **{
        name: ("kgrid_py.cli.curator", f"COMMANDS.{name}")
        for name in ("build", "init", "pack", "keygen", "sign", "verify", "publish", "status", "token", "vectors")
    },
    "score": ("kgrid_py.cli.population", "score"),
    "recalibrate": ("kgrid_py.cli.recalibration", "recalibrate"),
    "federate": ("kgrid_py.cli.federation", "federate"),
    "outcomes": ("kgrid_py.cli.monitoring", "outcomes"),
    "monitor": ("kgrid_py.cli.monitoring", "monitor_command"),
    "capture": ("kgrid_py.cli.learning", "capture"),
}


def _library_loader(module: str, attribute: str) -> Callable[[], click.Command]:
    def load() -> click.Command:
        found: object = importlib.import_module(module)
        for part in attribute.split("."):
            found = found[part] if isinstance(found, dict) else getattr(found, part)
        assert isinstance(found, click.Command)
        return found

    return load


def _plugin_loader(entry: EntryPoint) -> Callable[[], click.Command]:
    def load() -> click.Command:
        try:
            return entry.load()  # type: ignore[no-any-return]
        except ImportError as exc:  # a plugin whose own dependencies are missing
            return _unavailable(entry.name, str(exc))

    return load


def _add_library_commands() -> None:
    for name, (module, attribute) in _LIBRARY_COMMANDS.items():
        cli.add_lazy_command(name, _library_loader(module, attribute))


def _add_plugin_commands() -> None:
    for entry in entry_points(group="kgrid.commands"):
        cli.add_lazy_command(entry.name, _plugin_loader(entry))


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
