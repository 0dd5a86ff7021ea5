"""``kgrid federate plan|site|combine|odal``: a federated recalibration through a folder or HTTP mailbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from kgrid_py import load
from kgrid_py.cli.group import shelf_option, shelf_or_default
from kgrid_py.curation.signing import key_id, load_private_key, load_trust_dir
from kgrid_py.ko import KnowledgeObject
from kgrid_py.learning import federation as fd
from kgrid_py.learning.evidence import Columns, evidence_from_table, horizons_of, read_table
from kgrid_py.learning.mailbox import SITE_NAME, Mailbox, add_site_token, coordinate
from kgrid_py.learning.odal import odal2_update
from kgrid_py.learning.plans import FederationError, digest, dumps, read
from kgrid_py.learning.recalibration import Evidence, Kind, Update, fit_logistic
from kgrid_py.learning.site_summary import MONTH_DAYS, counts, logistic_statistics
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
@click.option("--lead", default=None, help="One-shot (ODAL2, logistic): the lead site; round 1 starts at its own fit.")
@click.option("--store", default=None, help="With --lead: the lead site's capture store URL.")
@click.option("--validation", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --lead: the lead site's validation file instead of --store.")  # fmt: skip
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
    lead: str | None,
    store: str | None,
    validation: Path | None,
    shelf: Path | None,
) -> None:
    """Start a study of REF's FUNCTION: write the signed round-1 plan and the keys into --mailbox.

    With --lead, round 1's parameters are the lead site's own estimate (ODAL2's θ̄), so after one
    round the lead may write the one-shot surrogate (`kgrid federate odal`) or the study may go on
    to the exact pooled fit (`kgrid federate combine`): the same round-1 messages serve both.
    """
    parent = load(ref, shelf=shelf_or_default(shelf), allow_retired=True)
    kind, horizon_days = horizons_of(parent, function, _horizons(horizons))
    start = None
    if lead is None and (store is not None or validation is not None):
        raise click.UsageError("--store/--validation on a plan are the lead site's data: give --lead SITE")
    if lead is not None:
        _logistic_only(kind, parent.ref)
        if lead not in {pair.partition("=")[0] for pair in sites}:
            raise click.BadParameter(f"{lead!r} is not one of the --site names", param_hint="--lead")
        evidence = _evidence(parent, function, kind, horizon_days, lead, store, validation)
        counts(evidence, {"patients": min_patients, "events": min_events})
        offset, y = evidence.binary()
        start = fit_logistic(offset, y, method).estimates.tolist()  # type: ignore[arg-type]
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
        start=start,
    )
    box.put_keys(private.public_key(), keys)
    path = box.put_plan(document)
    click.echo(f"study {document['payload']['study']}: round 1 plan for {parent.ref} {function} written to {path}")
    if start is not None:
        click.echo(f"one-shot ready: round 1 is at {lead}'s own estimate {start}")


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
    return _evidence(ko, plan["function"], kind, horizons, site, store, validation), ko.content_digest


def _evidence(
    ko: KnowledgeObject,
    function: str,
    kind: Kind,
    horizons: dict[str, float],
    site: str,
    store: str | None,
    validation: Path | None,
) -> Evidence:
    """One site's rows, from its capture store or a validation file (exactly one of the two)."""
    if (store is None) == (validation is None):
        raise click.UsageError("give exactly one of --store URL and --validation FILE")
    if store is not None:
        from kgrid_py.learning.store_evidence import evidence_from_store, open_existing

        with open_existing(store) as opened:
            return evidence_from_store(opened, ko, function, site, kind, horizons)
    assert validation is not None
    evidence, _ = evidence_from_table(ko, function, read_table(validation), kind, horizons, Columns(), site)
    if np.any(evidence.site != site):
        evidence = evidence.take(np.flatnonzero(evidence.site == site))
    return evidence


def _logistic_only(kind: str, ref: str) -> None:
    if kind != "logistic":
        raise FederationError(
            f"{ref} is a time-to-event KO: the one-shot ODAL2 surrogate is implemented for logistic KOs only "
            "(its Cox analogue needs risk-set sums this mailbox does not carry); run the iterative study "
            "(kgrid federate combine), which is exact"
        )


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
    parent = _planned_parent(first, shelf)
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


def _planned_parent(plan: dict[str, Any], shelf: Path) -> KnowledgeObject:
    """The plan's KO from ``shelf``, refused if its content has changed since the plan."""
    parent = load(f"{plan['ko']['id']}@{plan['ko']['version']}", shelf=shelf, allow_retired=True)
    if parent.content_digest != plan["ko"]["content_digest"]:
        raise FederationError(
            f"{parent.ref} on {shelf} has content digest {parent.content_digest}, the plan's is "
            f"{plan['ko']['content_digest']}: the parent has changed since the plan; no version written"
        )
    return parent


@federate.command("odal")
@click.option("--mailbox", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The study's coordinator key (the lead site coordinates a one-shot study).")  # fmt: skip
@click.option("--site", "lead", required=True, help="The lead site (named by the plan's --lead).")
@click.option("--store", default=None, help="The lead site's capture store URL.")
@click.option("--validation", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--version", "version", default=None, help="The new version (default: the parent's MINOR bump).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the new version (default: SHELF/ID/VERSION).")  # fmt: skip
@shelf_option
def odal_command(
    mailbox: Path,
    key_path: Path,
    lead: str,
    store: str | None,
    validation: Path | None,
    version: str | None,
    out: Path | None,
    shelf: Path | None,
) -> None:
    """One-shot ODAL2 at the lead site after round 1: the surrogate fit as a new version (not the pooled fit).

    Waits (exit 0) while sites have not answered round 1. The lead's rows must be the rows of its
    own round-1 message (checked: the same sums, bit for bit).
    """
    box = Mailbox(mailbox)
    private = load_private_key(key_path)
    trusted = box.trusted(private.public_key())
    plan = fd.verify_plan(box.plan_documents()[0], trusted)
    if plan["coordinator"] != key_id(private.public_key()):
        raise FederationError("this key is not the study's coordinator key")
    _logistic_only(plan["kind"], f"{plan['ko']['id']}@{plan['ko']['version']}")
    if lead not in plan["sites"]:
        raise FederationError(f"site {lead!r} is not in this study (sites: {', '.join(plan['sites'])})")
    try:
        sums, lineage = fd.combine(plan, box.messages(1), trusted)
    except fd.MissingMessages as waiting:
        click.echo(str(waiting))
        return
    evidence, _ = _site_evidence(plan, lead, store, validation, shelf)
    own = next(d["payload"] for d in box.messages(1) if d["payload"]["site"] == lead)
    if logistic_statistics(evidence, plan["method"], plan["theta"]["values"]) != own["statistics"]:
        raise FederationError(
            f"site {lead!r}: these rows do not give its round-1 message's sums (another store, or data changed "
            "since it answered); no version written"
        )
    offset, y = evidence.binary()
    if fit_logistic(offset, y, plan["method"]).estimates.tolist() != plan["theta"]["values"]:
        raise FederationError(
            f"round 1 is not at {lead}'s own estimate, so this is not ODAL2: plan the study with --lead {lead}"
        )
    network_n = sum(row["counts"]["n"] for row in lineage)
    update = odal2_update(
        offset, y, plan["method"], plan["theta"]["values"], sums["gradient"], sums["hessian"], network_n
    )
    folder = _publish_odal(plan, lineage, lead, update, version, out, shelf_or_default(shelf))
    params = ", ".join(f"{n} = {v:.6g}" for n, v in zip(update.names, update.estimates, strict=True))
    click.echo(f"ODAL2 one-shot surrogate at {lead} across {len(lineage)} sites ({params}); written to {folder}")


def _publish_odal(
    plan: dict[str, Any],
    lineage: list[dict[str, Any]],
    lead: str,
    update: Update,
    version: str | None,
    out: Path | None,
    shelf: Path,
) -> Path:
    """The surrogate version, its lineage saying what it is (one round, ODAL2), through the version writer."""
    parent = _planned_parent(plan, shelf)
    label = version or minor_bump(parent.version)
    record = {
        "version_label": label,
        "horizons_days": plan["horizons"],
        "estimand": "risk by the horizon",
        "data": [{"competing_events": 0, "censored": 0, **s["counts"], "site": s["site"]} for s in lineage],
        "federation": {
            "study": plan["study"],
            "plans_sha256": [digest(plan)],
            "rounds": [{"round": 1, "phase": plan["phase"], "theta": plan["theta"], "sites": lineage}],
            "algorithm": "ODAL2 one-shot surrogate likelihood (Duan et al., JAMIA 2020;27:376): the lead site's "
            "own log-likelihood corrected by the network's summed gradient and Hessian at theta_bar; "
            "NOT the pooled maximum-likelihood fit",
            "one_shot": {"lead": lead, "theta_bar": plan["theta"]["values"], "pooled": False},
            "covariance_note": "inverse of N times the surrogate's curvature at the estimate (model-based, "
            "not Duan et al.'s sandwich); log_likelihood is the surrogate's, times N",
            "minimum": plan["minimum"],
        },
        "parameters_hex": {n: float(v).hex() for n, v in zip(update.names, update.estimates, strict=True)},
        "performance_note": "before/after performance stays at the sites: no patient row left them",
    }
    reason = (
        f"one-shot ODAL2 surrogate {update.method} recalibration at lead site {lead} after one round across "
        f"{len(lineage)} sites (study {plan['study']}); close to, but not, the pooled fit"
    )
    target = out or shelf / parent.id / label
    outputs = sorted(plan["horizons"], key=lambda o: (plan["horizons"][o], o))
    return write_version(parent, plan["function"], update, {"reason": reason, "record": record}, target, outputs, label)
