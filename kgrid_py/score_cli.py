"""``kgrid score``: score a whole CSV, Parquet or JSON Lines file through one KO function.

A standalone click command; the ``kgrid`` group registers it. Exit 0 when the file was scored
(rows that could not be scored are in the output with an ``error``), 1 when it could not be,
2 for usage errors (a bad ``--map``, ``--unit`` or ``--keep``).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from kgrid_py.errors import KgridError
from kgrid_py.scoring import (
    DEFAULT_BATCH_SIZE,
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    MappingError,
    make_progress,
    parse_pairs,
    score_file,
)
from kgrid_py.shelf import load

__all__ = ["score"]


@click.command(name="score")
@click.argument("ref")
@click.argument("endpoint")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV, TSV, Parquet or JSON Lines file (.gz allowed for text).",
)
@click.option(
    "--output", "output_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Parquet or CSV."
)
@click.option("--map", "maps", multiple=True, metavar="COLUMN=INPUT", help="Feed COLUMN to INPUT (repeatable).")
@click.option(
    "--unit", "units", multiple=True, metavar="INPUT=UNIT", help="Values of INPUT (or its column) are in UNIT."
)
@click.option("--keep", default="", metavar="COL,...", help="Input columns to carry into the output, e.g. an id.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--input-format", type=click.Choice(INPUT_FORMATS), default=None, help="Default: from the suffix.")
@click.option("--output-format", type=click.Choice(OUTPUT_FORMATS), default=None, help="Default: from the suffix.")
@click.option("--progress/--no-progress", default=None, help="Default: a bar on a terminal, lines otherwise.")
@click.option(
    "--shelf",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Shelf folder (default: $KGRID_SHELF, else ./knowledge_objects).",
)
@click.pass_context
def score(
    ctx: click.Context,
    ref: str,
    endpoint: str,
    input_path: Path,
    output_path: Path,
    maps: tuple[str, ...],
    units: tuple[str, ...],
    keep: str,
    batch_size: int,
    input_format: str | None,
    output_format: str | None,
    progress: bool | None,
    shelf: Path | None,
) -> None:
    """Score every row of a file through ENDPOINT of the KO REF, streaming, into a new file.

    The output has the input's rows in order: the --keep columns, the outputs, and `error` and
    `warnings` columns. It appears only when the run completes.
    """
    root = ctx.find_root().obj
    debug = isinstance(root, dict) and bool(root.get("debug"))
    try:
        mapping = parse_pairs(maps, "--map")
        unit_map = parse_pairs(units, "--unit")
        ko = load(ref, shelf=shelf)  # None: load's own default, which also takes a manifest URL
        reporter = None
        if progress is not False:
            reporter = make_progress(
                bar=progress if progress else None, interval=float(os.environ.get("KGRID_PROGRESS_INTERVAL", "5"))
            )
        summary = score_file(
            ko,
            endpoint,
            input_path,
            output_path,
            mapping=mapping,
            units=unit_map,
            keep=[c.strip() for c in keep.split(",") if c.strip()],
            batch_size=batch_size,
            input_format=input_format,
            output_format=output_format,
            progress=reporter,
        )
    except MappingError as exc:
        if debug:
            raise
        raise click.UsageError(str(exc), ctx) from None
    except (KgridError, OSError) as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    click.echo(f"{ko.ref} {endpoint}")
    for line in summary.lines():
        click.echo(f"  {line}")
