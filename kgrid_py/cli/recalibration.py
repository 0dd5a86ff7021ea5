"""``kgrid recalibrate``: fit an update of a KO's risk outputs and write it as a new draft version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from kgrid_py import load
from kgrid_py.cli.group import shelf_option, shelf_or_default
from kgrid_py.learning.closed_testing import bootstrap_optimism, choose, performance
from kgrid_py.learning.evidence import Columns, evidence_from_table, horizons_of, read_table
from kgrid_py.learning.recalibration import RecalibrationError, fit
from kgrid_py.learning.store_evidence import evidence_from_sites, open_existing
from kgrid_py.learning.versioning import data_digest, data_summary, minor_bump, write_version

__all__ = ["recalibrate"]


def _horizons(pairs: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, sep, days = pair.partition("=")
        try:
            out[name] = float(days)
        except ValueError:
            sep = ""
        if not sep or out[name] <= 0:
            raise click.BadParameter(f"{pair!r}: expected OUTPUT=DAYS, e.g. risk_5y=1826", param_hint="--horizon")
    return out


@click.command()
@click.argument("ref")
@click.argument("function")
@click.option(
    "--validation",
    "validation",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CSV or Parquet: the KO's inputs, time_days, cause (0/1/2), [site, call_date].",
)
@click.option(
    "--store",
    "store",
    default=None,
    help="Capture store (path, sqlite:///path, postgresql://...): captured calls linked to their outcomes.",
)
@click.option("--method", type=click.Choice(["auto", "intercept", "slope"]), default="auto", show_default=True)
@click.option("--version", "version", default=None, help="The new version (default: the parent's MINOR bump).")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Empty or new folder for the new version.",
)
@click.option("--site", "sites", multiple=True, help="Only these sites (repeatable; default: every site with data).")
@click.option("--horizon", "horizons", multiple=True, help="OUTPUT=DAYS where the KO declares no outcome.")
@click.option("--bootstrap", "resamples", type=click.IntRange(1, 2000), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--alpha", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.05, show_default=True)
@shelf_option
def recalibrate(
    ref: str,
    function: str,
    validation: Path | None,
    store: str | None,
    method: str,
    version: str | None,
    out: Path,
    sites: tuple[str, ...],
    horizons: tuple[str, ...],
    resamples: int,
    seed: int,
    alpha: float,
    shelf: Path | None,
) -> None:
    """Recalibrate REF's FUNCTION on validation data (--validation FILE or --store URL); write the new version.

    `auto` keeps the original unless the closed test rejects it (exit 0, nothing written).
    """
    if (store is None) == (validation is None):
        raise click.UsageError("give exactly one of --validation FILE and --store URL")
    parent = load(ref, shelf=shelf_or_default(shelf))
    kind, horizon_days = horizons_of(parent, function, _horizons(horizons))
    source: dict[str, Any]
    if store is not None:
        with open_existing(store) as opened:
            evidence = evidence_from_sites(opened, parent, function, sites, kind, horizon_days)
            # The backend only: a published KO carries no host, path or user name of the site.
            backend = opened.engine.dialect.name
            source = {"capture_store": backend, "sites": sorted(set(map(str, evidence.site)))}
        refused = 0  # a refused call has no risk; linkage uses each subject's first successful call
    else:
        assert validation is not None
        table = read_table(validation)
        evidence, refused = evidence_from_table(parent, function, table, kind, horizon_days, Columns())
        source = {"validation_file": validation.name}
        if sites:
            missing = sorted(set(sites) - set(map(str, evidence.site)))
            if missing:
                raise RecalibrationError(f"no rows for site(s) {missing}")
            evidence = evidence.take(np.flatnonzero(np.isin(evidence.site, sites)))
    if method == "auto":
        choice = choose(evidence, alpha)
        update, reason, tests = choice.update, choice.reason, choice.tests
    else:
        update, reason, tests = fit(evidence, method), f"method {method} chosen by the curator", []  # type: ignore[arg-type]
    if update.method == "none":
        click.echo(f"{parent.ref} {function}: {reason}. No version written.")
        return
    optimism = bootstrap_optimism(evidence, method, resamples, seed, alpha)
    record = {
        "version_label": version or minor_bump(parent.version),
        "closed_test": tests,
        "alpha": alpha,
        "horizons_days": horizon_days,
        "estimand": "net risk (competing events censored)" if kind == "time-to-event" else "risk by the horizon",
        "data": data_summary(evidence),
        "data_digest": data_digest(evidence),
        "rows_refused_by_ko": refused,
        "performance": {"before": performance(evidence), "after": performance(evidence, update)},
        "optimism": optimism,
        "source": source,
    }
    folder = write_version(
        parent, function, update, {"reason": reason, "record": record}, out, evidence.outputs, version
    )
    params = ", ".join(f"{n} = {v:.6g}" for n, v in zip(update.names, update.estimates, strict=True))
    click.echo(f"{parent.ref} -> {record['version_label']} ({update.method}: {params}) written to {folder}")
    click.echo(f"why: {reason}")
    click.echo(json.dumps(record["performance"], indent=None))
