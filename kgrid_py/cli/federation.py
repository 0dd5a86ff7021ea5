"""``kgrid federate plan|site|combine``: a federated recalibration through a folder or HTTP mailbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from kgrid_py import load
from kgrid_py.cli.group import shelf_option, shelf_or_default
from kgrid_py.curation.signing import key_id, load_private_key, load_trust_dir
from kgrid_py.learning import federation as fd
from kgrid_py.learning.evidence import Columns, evidence_from_table, horizons_of, read_table
from kgrid_py.learning.mailbox import SITE_NAME, Mailbox, add_site_token, coordinate
from kgrid_py.learning.plans import FederationError, digest, dumps, read
from kgrid_py.learning.recalibration import Evidence
from kgrid_py.learning.site_summary import MONTH_DAYS
from kgrid_py.learning.versioning import minor_bump, write_version

__all__ = ["federate"]


@click.group()
def federate() -> None:
    """Recalibrate a KO across sites that never share patient rows (a mailbox of signed sums)."""


def _public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: not a PEM public key ({exc})", param_hint="--site") from None
    if not isinstance(key, Ed25519PublicKey):
        raise click.BadParameter(f"{path}: not an Ed25519 public key", param_hint="--site")
    return key


def _horizons(pairs: tuple[str, ...]) -> dict[str, float]:
    from kgrid_py.cli.recalibration import _horizons as parse

    return parse(pairs)


@federate.command("plan")
@click.argument("ref")
@click.argument("function")
@click.option("--method", type=click.Choice(["intercept", "slope"]), required=True)
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--site", "sites", multiple=True, required=True, help="NAME=PUBLIC_KEY.pem, once per site.")
@click.option("--mailbox", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="New folder for the study; its name is the study id (served as /federation/<name>).")  # fmt: skip
@click.option("--min-patients", type=click.IntRange(1), default=50, show_default=True)
@click.option("--min-events", type=click.IntRange(1), default=10, show_default=True)
@click.option("--max-rounds", type=click.IntRange(1, 100), default=25, show_default=True)
@click.option("--grid-days", type=click.FloatRange(1.0, 3653.0), default=MONTH_DAYS, show_default=True)
@click.option("--horizon", "horizons", multiple=True, help="OUTPUT=DAYS where the KO declares no outcome.")
@shelf_option
def plan_command(
    ref: str,
    function: str,
    method: str,
    key_path: Path,
    sites: tuple[str, ...],
    mailbox: Path,
    min_patients: int,
    min_events: int,
    max_rounds: int,
    grid_days: float,
    horizons: tuple[str, ...],
    shelf: Path | None,
) -> None:
    """Start a study of REF's FUNCTION: write the signed round-1 plan and the keys into --mailbox."""
    parent = load(ref, shelf=shelf_or_default(shelf), allow_retired=True)
    kind, horizon_days = horizons_of(parent, function, _horizons(horizons))
    keys = {}
    for pair in sites:
        name, sep, path = pair.partition("=")
        if not sep or not SITE_NAME.match(name):
            raise click.BadParameter(f"{pair!r}: expected NAME=PUBLIC_KEY.pem", param_hint="--site")
        keys[name] = _public_key(Path(path))
    private = load_private_key(key_path)
    box = Mailbox(mailbox)
    if not SITE_NAME.match(mailbox.name):
        raise click.BadParameter(f"{mailbox.name!r}: letters, digits, '.', '_' and '-' only", param_hint="--mailbox")
    if (mailbox / "plans").exists():
        raise FederationError(f"{mailbox} already holds a study; use a new folder")
    document = fd.new_plan(
        ko={"id": parent.id, "version": parent.version, "content_digest": parent.content_digest},
        function=function,
        kind=kind,
        method=method,
        horizons=horizon_days,
        sites={s: key_id(k) for s, k in keys.items()},
        private_key=private,
        minimum={"patients": min_patients, "events": min_events},
        max_rounds=max_rounds,
        grid_days=grid_days,
        study=mailbox.name,
    )
    box.put_keys(private.public_key(), keys)
    path = box.put_plan(document)
    click.echo(f"study {document['payload']['study']}: round 1 plan for {parent.ref} {function} written to {path}")


@federate.command("token")
@click.option("--mailbox", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--site", "site", required=True)
def token_command(mailbox: Path, site: str) -> None:
    """Print a new HTTP-mailbox token for --site (only its sha256 is kept, in MAILBOX/site-tokens.json)."""
    plan = Mailbox(mailbox).latest_plan()["payload"]
    if site not in plan["sites"]:
        raise FederationError(f"site {site!r} is not in this study (sites: {', '.join(plan['sites'])})")
    click.echo(add_site_token(Mailbox(mailbox), site))


def _site_evidence(
    plan: dict[str, Any], site: str, store: str | None, validation: Path | None, shelf: Path | None
) -> tuple[Evidence, str]:
    ko = load(f"{plan['ko']['id']}@{plan['ko']['version']}", shelf=shelf_or_default(shelf), allow_retired=True)
    kind, horizons = plan["kind"], {k: float(v) for k, v in plan["horizons"].items()}
    if (store is None) == (validation is None):
        raise click.UsageError("give exactly one of --store URL and --validation FILE")
    if store is not None:
        from kgrid_py.learning.store import CaptureStore
        from kgrid_py.learning.store_evidence import evidence_from_store

        with CaptureStore.open(store) as opened:
            return evidence_from_store(opened, ko, plan["function"], site, kind, horizons), ko.content_digest
    assert validation is not None
    evidence, _ = evidence_from_table(ko, plan["function"], read_table(validation), kind, horizons, Columns(), site)
    if np.any(evidence.site != site):
        evidence = evidence.take(np.flatnonzero(evidence.site == site))
    return evidence, ko.content_digest


@federate.command("site")
@click.argument("plan_source")
@click.option("--site", "site", required=True)
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--trust", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder with the coordinator's public key.")  # fmt: skip
@click.option("--store", default=None, help="The site's capture store URL (calls and outcomes).")
@click.option("--validation", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the message here.")
@click.option("--token", envvar="KGRID_FEDERATION_TOKEN", default=None, help="Site token for an HTTP mailbox.")
@shelf_option
def site_command(
    plan_source: str,
    site: str,
    key_path: Path,
    trust: Path,
    store: str | None,
    validation: Path | None,
    out: Path | None,
    token: str | None,
    shelf: Path | None,
) -> None:
    """Answer the latest plan of PLAN_SOURCE (a plan file, a mailbox folder, or the coordinator's URL)."""
    remote = plan_source.startswith(("http://", "https://"))
    if remote:
        from kgrid_py.learning.remote_mailbox import fetch_plan

        document = fetch_plan(plan_source, token)
    elif Path(plan_source).is_dir():
        document = Mailbox(Path(plan_source)).latest_plan()
    else:
        document = read(Path(plan_source))
    plan = fd.verify_plan(document, load_trust_dir(trust))
    if _already_answered(plan_source, remote, token, plan, site):
        click.echo(f"site {site}: round {plan['round']} is already answered; waiting for the next plan")
        return
    evidence, ko_digest = _site_evidence(plan, site, store, validation, shelf)
    message = fd.site_message(plan, evidence, site, load_private_key(key_path), ko_digest)
    tally = message["payload"]["counts"]
    if remote:
        from kgrid_py.learning.remote_mailbox import post_message

        post_message(plan_source, token, message)
        where = plan_source
    elif out is not None:
        out.write_bytes(dumps(message))
        where = str(out)
    elif Path(plan_source).is_dir():
        where = str(Mailbox(Path(plan_source)).put_message(message))
    else:
        raise click.UsageError("answering a plan file needs --out FILE")
    click.echo(
        f"site {site}: round {plan['round']} answered ({tally['n']} patients, {tally['events']} events) -> {where}"
    )


def _already_answered(source: str, remote: bool, token: str | None, plan: dict[str, Any], site: str) -> bool:
    """A site polling again before the next plan sends nothing (a message is written once per round)."""
    if remote:
        from kgrid_py.learning.remote_mailbox import fetch_status

        status = fetch_status(source, token)
        return bool(status.get("round") == plan["round"] and site in status.get("answered", []))
    if Path(source).is_dir():
        return any(d["payload"]["site"] == site for d in Mailbox(Path(source)).messages(plan["round"]))
    return False


@federate.command("combine")
@click.option("--mailbox", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--version", "version", default=None, help="The new version (default: the parent's MINOR bump).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the new version (default: SHELF/ID/VERSION).")  # fmt: skip
@shelf_option
def combine_command(mailbox: Path, key_path: Path, version: str | None, out: Path | None, shelf: Path | None) -> None:
    """Sum this round's messages and write the next plan, or, once converged, the new KO version.

    Safe to run at any time (e.g. hourly): it waits while sites have not answered.
    """
    box = Mailbox(mailbox)
    try:
        outcome = coordinate(box, load_private_key(key_path))
    except fd.MissingMessages as waiting:
        click.echo(str(waiting))
        return
    if isinstance(outcome, dict):
        payload = outcome["payload"]
        click.echo(f"round {payload['round']} plan written ({payload['phase']}, theta {payload['theta']['values']})")
        return
    final, plans = outcome
    folder = publish_result(box, final, plans, version, out, shelf_or_default(shelf))
    params = ", ".join(f"{n} = {v:.6g}" for n, v in zip(final.update.names, final.update.estimates, strict=True))
    click.echo(f"converged in {final.rounds} round(s) ({params}); new version written to {folder}")


def publish_result(
    box: Mailbox, final: fd.Final, plans: list[dict[str, Any]], version: str | None, out: Path | None, shelf: Path
) -> Path:
    """Write the recalibrated version through the version writer, and result.json into the mailbox."""
    first = plans[0]
    parent = load(f"{first['ko']['id']}@{first['ko']['version']}", shelf=shelf, allow_retired=True)
    if parent.content_digest != first["ko"]["content_digest"]:
        raise FederationError(
            f"{parent.ref} on {shelf} has content digest {parent.content_digest}, the plan's is "
            f"{first['ko']['content_digest']}: the parent has changed since the plan; no version written"
        )
    label = version or minor_bump(parent.version)
    last = final.round_records[-1]["sites"]
    update = final.update
    record = {
        "version_label": label,
        "horizons_days": first["horizons"],
        "estimand": "net risk (competing events censored)"
        if first["kind"] == "time-to-event"
        else "risk by the horizon",
        "data": [
            {"competing_events": 0, "censored": 0, **s["counts"], "site": s["site"]}
            for s in last  # the last round's counts (every round's are under federation.rounds)
        ],
        "federation": {
            "study": first["study"],
            "plans_sha256": [digest(p) for p in plans],
            "rounds": final.round_records,
            "final_newton_step": final.final_step,
            "grid_days": first["grid"],
            "minimum": first["minimum"],
            "algorithm": "Newton-Raphson on summed site gradients and Hessians (Cox slope stratified by site); "
            "baseline: piecewise-exponential on the public grid",
        },
        "parameters_hex": {n: float(v).hex() for n, v in zip(update.names, update.estimates, strict=True)},
        "performance_note": "before/after performance stays at the sites: no patient row left them",
    }
    reason = (
        f"federated {update.method} recalibration across {len(last)} sites (method fixed in the signed plan "
        f"of study {first['study']}), converged in {final.rounds} round(s)"
    )
    target = out or shelf / parent.id / label
    outputs = sorted(first["horizons"], key=lambda o: (first["horizons"][o], o))
    folder = write_version(
        parent, first["function"], update, {"reason": reason, "record": record}, target, outputs, label
    )
    box.put_result({"version": label, "folder": str(folder), **update.as_record(), **record})
    return folder
