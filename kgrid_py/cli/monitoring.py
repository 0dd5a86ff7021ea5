"""``kgrid outcomes import`` and ``kgrid monitor``: link what happened, and judge each KO version per site.

Exit codes: 0 done, 1 failure (one line on stderr), 2 usage error, and for ``kgrid monitor`` 3 when
a metric left a range the KO declares (the reports are still written), so a scheduler can act.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import click

from kgrid_py import load
from kgrid_py.cli.group import shelf_option
from kgrid_py.learning.monitor import MonitorError, monitor
from kgrid_py.learning.outcomes import OutcomeImportError, import_rows, read_outcome_file, rows_from_table
from kgrid_py.learning.report import render_html
from kgrid_py.learning.store import CaptureStore, StoreError
from kgrid_py.learning.subjects import SubjectKeyer, SubjectSecretError

__all__ = ["ALERT_EXIT_CODE", "monitor_command", "outcomes"]

ALERT_EXIT_CODE = 3


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group(name="outcomes")
def outcomes() -> None:
    """Import outcomes (what happened after a call) into the capture store."""


@outcomes.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--store", "store_url", required=True, envvar="KGRID_CAPTURE", help="Capture store: path or URL.")
@click.option("--site", required=True, help="The site the patients belong to (whose secret keys them).")
@click.option("--outcome", required=True, help="Outcome name as the KO declares it, e.g. kidney_failure.")
@click.option("--subject-col", required=True, help="Column with the patient id (keyed, never stored).")
@click.option("--event-col", help="Column: 1 if the outcome happened, else 0.")
@click.option("--event-date-col", help="Column: date of the outcome (YYYY-MM-DD).")
@click.option("--followup-col", help="Column: date of the last follow-up.")
@click.option("--competing-col", help="Column: 1 if the competing event (e.g. death) happened.")
@click.option("--competing-date-col", help="Column: date of the competing event.")
@click.option("--value-col", help="Column: a measured value (continuous outcomes, e.g. measured GFR).")
@click.option("--value-date-col", help="Column: date of the measured value.")
@click.option(
    "--subject-secret-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The site's subject secret (default: $KGRID_SUBJECT_SECRET).",
)
def import_command(
    file: Path,
    store_url: str,
    site: str,
    outcome: str,
    subject_col: str,
    event_col: str | None,
    event_date_col: str | None,
    followup_col: str | None,
    competing_col: str | None,
    competing_date_col: str | None,
    value_col: str | None,
    value_date_col: str | None,
    subject_secret_file: Path | None,
) -> None:
    """Import an outcome FILE (CSV or Parquet); prints what happened to each row as JSON."""
    if not (event_col or competing_col or value_col):
        raise click.UsageError("give --event-col, --competing-col or --value-col")
    try:
        keyer = SubjectKeyer.resolve(subject_secret_file)
    except SubjectSecretError as exc:
        raise click.UsageError(str(exc)) from None
    if keyer is None:
        raise click.UsageError("no subject secret: give --subject-secret-file or set $KGRID_SUBJECT_SECRET")
    columns = {
        "patient_id": subject_col,
        "event": event_col,
        "event_date": event_date_col,
        "followup_date": followup_col,
        "competing_event": competing_col,
        "competing_date": competing_date_col,
        "value": value_col,
        "value_date": value_date_col,
    }
    try:
        rows = rows_from_table(read_outcome_file(file), columns)
        with CaptureStore.open(store_url) as store:
            report = import_rows(store, rows, site=site, outcome=outcome, keyer=keyer, source=f"file:{file.name}")
    except (OutcomeImportError, StoreError) as exc:
        _fail(str(exc))
    click.echo(json.dumps(report.to_json(), indent=2))


@click.command(name="monitor")
@click.argument("ref")
@click.argument("function")
@click.option("--store", "store_url", required=True, envvar="KGRID_CAPTURE", help="Capture store: path or URL.")
@click.option("--site", help="Only this site (default: every site, each on its own).")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), help="Only calls from this UTC date on.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the HTML report.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report.")
@shelf_option
def monitor_command(
    ref: str,
    function: str,
    store_url: str,
    site: str | None,
    since: dt.datetime | None,
    html_path: Path | None,
    json_path: Path | None,
    shelf: Path | None,
) -> None:
    """Report how a KO version's FUNCTION performs at each site; exit 3 on an alert."""
    ko = load(ref, shelf=shelf, allow_retired=True)
    spec = ko.metadata.function(function)
    try:
        with CaptureStore.open(store_url) as store:
            report = monitor(store, ko.id, ko.version, spec, site=site, since=since.date() if since else None)
    except (StoreError, MonitorError) as exc:
        _fail(str(exc))
    if json_path:
        json_path.write_text(json.dumps(report, indent=1, allow_nan=False))
    if html_path:
        html_path.write_text(render_html(report))
    sites = report["sites"]
    click.echo(
        f"{ko.id} {ko.version} {function}: {sum(s['calls'] for s in sites)} calls at {len(sites)} site(s), "
        f"{len(report['alerts'])} alert(s)"
    )
    for alert in report["alerts"]:
        click.echo(
            f"ALERT {alert['site']} {alert['horizon'] or ''} {alert['metric']} = {alert['value']:.3f} "
            f"outside [{alert['minimum']}, {alert['maximum']}]",
            err=True,
        )
    if report["alerts"]:
        sys.exit(ALERT_EXIT_CODE)
