"""``python -m kgrid_py`` is the ``kgrid`` command."""

from kgrid_py.cli import main

main()
