"""``kgrid`` starts without importing what only some commands need (matplotlib, scipy, the activator).

Sites run ``kgrid federate site`` on a schedule and tests start dozens of ``kgrid`` processes: an
eager import of every command's dependencies cost seconds of CPU at each start.
"""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from kgrid_py.cli import cli

HEAVY = ("matplotlib", "scipy", "activator", "sqlalchemy", "jinja2")


def _imported_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(done.stdout.split())


def test_the_command_line_imports_no_heavy_module_until_a_command_needs_it() -> None:
    assert not _imported_after("import kgrid_py.cli") & set(HEAVY)


def test_a_lazy_command_loads_on_use_and_every_command_is_listed() -> None:
    assert {"monitor", "federate", "serve", "score", "recalibrate"} <= set(cli.list_commands(click.Context(cli)))
    assert "matplotlib" in _imported_after(
        "from kgrid_py.cli import cli\nimport click\ncli.get_command(click.Context(cli), 'monitor')"
    )
    result = CliRunner().invoke(cli, ["federate", "--help"])
    assert result.exit_code == 0 and "combine" in result.output
    assert CliRunner().invoke(cli, ["no-such-command"]).exit_code == 2
