"""``kgrid capture export`` and ``kgrid capture prune``: the capture store's data out, and old data gone.

Exit codes: 0 done, 1 failure (one line on stderr), 2 usage error (a bad date).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from kgrid_py.learning.export import ExportError, export_parquet, parse_when
from kgrid_py.learning.store import CaptureStore, StoreError, to_us

__all__ = ["capture"]


class _When(click.ParamType):
    name = "DATE"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        try:
            return parse_when(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


STORE = click.option("--store", "store_url", required=True, envvar="KGRID_CAPTURE", help="Capture store: path or URL.")


@click.group(name="capture")
def capture() -> None:
    """Export or prune the calls a capture store recorded."""


@capture.command(name="export")
@STORE
@click.option("--ko", "ko_id", help="Only this KO id.")
@click.option("--site", help="Only this site.")
@click.option("--since", type=_When(), help="From this date or time (UTC; inclusive).")
@click.option("--until", type=_When(), help="Before this date or time (UTC; default: now).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The Parquet file.")
def export_command(
    store_url: str, ko_id: str | None, site: str | None, since: dt.datetime | None, until: dt.datetime | None, out: Path
) -> None:
    """Write calls as Parquet: metadata columns, then one column per input (as received and as used) and output."""
    try:
        with CaptureStore.open(store_url) as store:
            rows = export_parquet(store, out, ko_id=ko_id, site=site, since=since, until=until)
    except (StoreError, ExportError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{rows} calls written to {out}")


@capture.command(name="prune")
@STORE
@click.option("--before", required=True, type=_When(), help="Delete calls (and their feedback) before this (UTC).")
def prune_command(store_url: str, before: dt.datetime) -> None:
    """Delete calls older than --before, with the feedback about them (outcomes are kept)."""
    try:
        with CaptureStore.open(store_url) as store:
            deleted = store.prune(to_us(before))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{deleted} calls before {before.isoformat()} deleted")
