"""``kgrid score``: score a whole CSV, Parquet or JSON Lines file through one KO function.

A standalone click command; the ``kgrid`` group registers it. Exit 0 when the file was scored
(rows that could not be scored are in the output with an ``error``), 1 when it could not be,
2 for usage errors (a bad ``--map``, ``--unit`` or ``--keep``), and 128 + the signal number
(130 for SIGINT, 143 for SIGTERM) when it was interrupted: the partial output is removed first,
so an interrupted run leaves no ``.partial`` file and an existing output as it was.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click

from kgrid_py import load
from kgrid_py.errors import KgridError
from kgrid_py.learning.capture import CaptureError
from kgrid_py.learning.store import StoreError
from kgrid_py.learning.subjects import SubjectSecretError
from kgrid_py.population.scoring import (
    DEFAULT_BATCH_SIZE,
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    MappingError,
    make_progress,
    parse_pairs,
    score_file,
)

__all__ = ["Interrupted", "score"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised in the main thread when SIGINT or SIGTERM arrives during a run.

    A BaseException so nothing that catches ``Exception`` swallows it: it unwinds through
    :func:`~kgrid_py.population.scoring.score_file`, which removes its temporary output on the way out.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "killed by this signal"


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread; callers there keep theirs
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
@click.option("--subject", metavar="COL", help="Patient-id column: recorded keyed (HMAC) with --capture, never output.")
@click.option("--capture", "capture_url", help="Record one call per row (channel batch) in this capture store.")
@click.option("--site", help="The site recorded with each call (required with --capture).")
@click.option(
    "--subject-secret-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The site's subject secret (default: $KGRID_SUBJECT_SECRET).",
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
    subject: str | None,
    capture_url: str | None,
    site: str | None,
    subject_secret_file: Path | None,
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
        if capture_url is not None and not site:
            raise click.UsageError("--capture needs --site (the site recorded with each call)", ctx)
        if subject is not None and capture_url is None:
            raise click.UsageError("--subject is only used with --capture (it is never written to the output)", ctx)
        # sync: each batch's records commit (one transaction) before its rows are written out.
        capture = {"capture": capture_url, "site": site, "capture_policy": "sync"} if capture_url else {}
        if capture_url and subject is not None:
            capture["subject_secret"] = subject_secret_file
        ko = load(ref, shelf=shelf, **capture)  # None: load's own default, which also takes a manifest URL
        reporter = None
        if progress is not False:
            reporter = make_progress(
                bar=progress if progress else None, interval=float(os.environ.get("KGRID_PROGRESS_INTERVAL", "5"))
            )
        with _stop_on_signals():
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
                subject=subject,
            )
    except Interrupted as exc:
        click.echo(f"interrupted ({signal.Signals(exc.signum).name}): no output written", err=True)
        ctx.exit(exc.exit_code)
    except MappingError as exc:
        if debug:
            raise
        raise click.UsageError(str(exc), ctx) from None
    except (KgridError, OSError, CaptureError, StoreError, SubjectSecretError) as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    click.echo(f"{ko.ref} {endpoint}")
    for line in summary.lines():
        click.echo(f"  {line}")
