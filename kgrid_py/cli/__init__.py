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

from importlib.metadata import entry_points

import click

from kgrid_py.cli import developer  # noqa: F401  (registers its commands on the group)
from kgrid_py.cli.curator import COMMANDS
from kgrid_py.cli.group import cli
from kgrid_py.cli.learning import capture
from kgrid_py.cli.monitoring import monitor_command, outcomes
from kgrid_py.cli.population import score
from kgrid_py.cli.recalibration import recalibrate

__all__ = ["cli", "main"]


def _add_library_commands() -> None:
    for name, command in COMMANDS.items():
        cli.add_command(command, name)
    cli.add_command(score, "score")
    cli.add_command(recalibrate, "recalibrate")
    cli.add_command(outcomes, "outcomes")
    cli.add_command(monitor_command, "monitor")
    cli.add_command(capture, "capture")


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
