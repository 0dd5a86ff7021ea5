"""Curator commands: init, pack, keygen, sign, verify, publish, status, token, vectors.

Standalone click commands; ``kgrid_py.cli`` registers them into the ``kgrid`` group, whose
error handling turns a :class:`~kgrid_py.errors.KgridError` into one line on stderr and exit 1.
Tokens come from ``--token`` or ``KGRID_TOKEN`` and are never printed.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import requests

from kgrid_py.curation.archive import check_model_references, extract, inspect, pack
from kgrid_py.curation.build import regenerate_vectors
from kgrid_py.curation.errors import RemoteError, VectorsFailed
from kgrid_py.curation.lifecycle import SETTABLE, lifecycle_info, set_status
from kgrid_py.curation.publish import PublishPolicy, publish_archive
from kgrid_py.curation.scaffold import init_ko
from kgrid_py.curation.signing import generate_keypair, load_private_key, load_trust_dir, sign_archive, verify_signature
from kgrid_py.curation.tokens import ROLES, generate_token, hash_token
from kgrid_py.ko import KnowledgeObject, read_metadata, verify_files
from kgrid_py.shelf import Reference, Shelf, default_shelf_path

__all__ = [
    "COMMANDS",
    "init",
    "keygen",
    "pack_command",
    "publish",
    "refusal_message",
    "sign",
    "status",
    "token",
    "vectors",
    "verify",
]

_TIMEOUT = (10.0, 300.0)


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@click.command()
@click.argument("name")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@click.option("--version", "version", default="1.0.0", show_default=True, help="First version of the KO.")
@click.option("--author", default="TODO: your name", help="Contributor name for the metadata.")
@click.option("--license", "license_", default="Apache-2.0", show_default=True)
def init(name: str, parent: Path, version: str, author: str, license_: str) -> None:
    """Create a new KO folder NAME from a template that passes `kgrid validate`."""
    path = init_ko(name, parent, version=version, author=author, license=license_)
    click.echo(f"{name}@{version}: created {path} (status draft)")
    click.echo(f"next: edit src/ and metadata.json, `kgrid build {path}`, `kgrid validate {path}`")


@click.command(name="pack")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True)
def pack_command(path: Path, output: Path) -> None:
    """Pack a sealed KO folder into one deterministic archive; refused if its own vectors fail."""
    ko = KnowledgeObject.from_path(path)
    if ko.metadata.tests is None:
        raise VectorsFailed(f"{ko.ref} has no test vectors; a shelf refuses it, so it is not packed")
    failed = [o for o in ko.test() if not o.passed]
    if failed:
        for outcome in failed:
            click.echo(f"FAIL {outcome.vector.name}: {outcome.detail}", err=True)
        raise VectorsFailed(
            f"{ko.ref}: {len(failed)} test vector(s) failed, so it is not packed; after changing the model, "
            f"`kgrid vectors regenerate {path}` recomputes expected values from src/reference.py"
        )
    data = pack(path)
    output.write_bytes(data)
    info = inspect(data)
    click.echo(f"{info.ref}: {output} ({len(data)} bytes, {len(info.files)} files, digest {info.manifest_digest})")


@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--name", default="kgrid", show_default=True, help="Key file stem: NAME.key.pem / NAME.pub.pem.")
def keygen(directory: Path, name: str) -> None:
    """Generate an Ed25519 key pair for signing archives."""
    private, public = generate_keypair(directory, name)
    click.echo(f"private key: {private} (keep secret)")
    click.echo(f"public key:  {public} (copy into the activator's trust dir)")


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Default: sign in place.")
def sign(archive: Path, key: Path, output: Path | None) -> None:
    """Sign an archive's manifest digest; the signature travels inside the archive."""
    data = sign_archive(archive.read_bytes(), load_private_key(key))
    target = output or archive
    _write_atomic(target, data)
    info = inspect(data)
    click.echo(f"{info.ref}: signed with key {info.signature['key_id'] if info.signature else '?'} -> {target}")


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--trust", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Require a trusted signature."
)
def verify(archive: Path, trust: Path | None) -> None:
    """Check an archive: safe structure, every digest, valid metadata, and (with --trust) its signature."""
    data = archive.read_bytes()
    with tempfile.TemporaryDirectory(prefix="kgrid-verify-") as temp:
        info = extract(data, Path(temp) / "ko")
        raw, metadata = read_metadata(Path(temp) / "ko")
        verify_files(Path(temp) / "ko", metadata)
        check_model_references(Path(temp) / "ko", raw)
    signer = verify_signature(info, load_trust_dir(trust)).name if trust else None
    signed = f"signed by {signer}" if signer else ("signed (not checked: no --trust)" if info.signature else "unsigned")
    click.echo(f"{info.ref}: ok, digest {info.manifest_digest}, {signed}")


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "target", required=True, help="A shelf folder, or an activator's base URL.")
@click.option("--token", envvar="KGRID_TOKEN", help="Bearer token for a URL (default: $KGRID_TOKEN).")
@click.option("--require-signature", is_flag=True, help="Local shelf: refuse unsigned archives.")
@click.option("--trust", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Local: trusted keys.")
@click.option("--actor", help="Name for the audit log (default: your user name).")
def publish(
    archive: Path, target: str, token: str | None, require_signature: bool, trust: Path | None, actor: str | None
) -> None:
    """Publish an archive into a local shelf, or POST it to an activator's /kos."""
    data = archive.read_bytes()
    if urlparse(target).scheme in ("http", "https"):
        body = post_archive(data, target, token)
        click.echo(json.dumps(body, indent=2) if isinstance(body, dict | list) else str(body))
        return
    policy = PublishPolicy(require_signature=require_signature, trust_dir=trust)
    outcome = publish_archive(data, Path(target), policy, actor=_actor(actor))
    verb = "published" if outcome.changed else "already published (identical, nothing changed)"
    click.echo(f"{outcome.ref}: {verb}, status {outcome.status}, manifest {outcome.digest}")
    for change in outcome.changes:
        click.echo(f"  change: {change}")


def post_archive(data: bytes, base_url: str, token: str | None) -> object:
    """POST the archive to ``<base_url>/kos`` with a bearer token; the parsed answer, or RemoteError."""
    url = base_url if urlparse(base_url).path.rstrip("/").endswith("/kos") else base_url.rstrip("/") + "/kos"
    _warn_plain_http(url, token)
    return _request("POST", url, {"Content-Type": "application/zip"}, token, "publish", data=data)


def _warn_plain_http(url: str, token: str | None) -> None:
    parsed = urlparse(url)
    if token and parsed.scheme == "http" and not _is_loopback(parsed.hostname or ""):
        click.echo("warning: sending a token over plain http; use https outside this machine", err=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.argument("ref")
@click.option("--set", "new_status", type=click.Choice(SETTABLE), help="New lifecycle status.")
@click.option("--successor", help="Reference of the version that replaces this one.")
@click.option("--sunset", help="Date (YYYY-MM-DD) after which a deprecated version stops serving.")
@click.option("--shelf", type=click.Path(file_okay=False, path_type=Path), default=None, help="Default: $KGRID_SHELF.")
@click.option("--actor", help="Name for the audit log (default: your user name).")
@click.option("--to", "target", help="An activator's base URL: use its status route instead of a local shelf.")
@click.option("--token", envvar="KGRID_TOKEN", help="Bearer token (admin role) for --to (default: $KGRID_TOKEN).")
def status(
    ref: str,
    new_status: str | None,
    successor: str | None,
    sunset: str | None,
    shelf: Path | None,
    actor: str | None,
    target: str | None,
    token: str | None,
) -> None:
    """Show or set a KO version's lifecycle status (deprecated, retired; or active again).

    With --to URL, on a running activator (POST /kos/{id}/{version}/status, admin role); the
    audit log there records the token's principal, so --actor does not apply.
    """
    if (successor or sunset) and new_status is None:
        raise click.UsageError("--successor and --sunset go with --set")
    if target is not None:
        _remote_status(target, token, ref, new_status, successor, sunset)
        return
    root = shelf if shelf is not None else default_shelf_path()
    if new_status is None:
        entry = Shelf(root).resolve(Reference.parse(ref))
        info = lifecycle_info(root, entry.ko_id, entry.version)
        extra = "".join(f", {k} {v}" for k, v in (("successor", info.successor), ("sunset", info.sunset)) if v)
        click.echo(f"{entry.ko_id}@{entry.version}: {info.status}{extra}")
        return
    change = set_status(root, ref, new_status, _actor(actor), successor=successor, sunset=sunset)
    if change.changed:
        click.echo(
            f"{change.ref}: {change.previous} -> {change.status}"
            + (f" (successor {change.successor})" if change.successor else "")
        )
    else:
        click.echo(f"{change.ref}: already {change.status}")


def _remote_status(
    base_url: str, token: str | None, ref: str, new_status: str | None, successor: str | None, sunset: str | None
) -> None:
    reference = Reference.parse(ref)
    if not reference.is_exact:
        raise click.UsageError(f"{ref!r}: a status belongs to an exact version (id@X.Y.Z)")
    if urlparse(base_url).scheme not in ("http", "https"):
        raise click.UsageError(f"--to {base_url!r}: expected an http(s) URL")
    url = f"{base_url.rstrip('/')}/kos/{reference.ko_id}/{reference.spec}/status"
    headers = {"Accept": "application/json"}
    if new_status is None:
        body = _request("GET", url, headers, token, "admin")
    else:
        _warn_plain_http(url, token)
        payload = {"status": new_status, "successor": successor, "sunset": sunset}
        body = _request("POST", url, headers, token, "admin", json={k: v for k, v in payload.items() if v is not None})
    if not isinstance(body, dict):
        raise RemoteError(f"{url}: the answer is not a JSON object: {str(body)[:500]}")
    extra = "".join(f", {k} {body[k]}" for k in ("successor", "sunset") if body.get(k))
    if new_status is None:
        click.echo(f"{body.get('ref', ref)}: {body.get('status')}{extra}")
    elif body.get("changed"):
        click.echo(f"{body['ref']}: {body['previous']} -> {body['status']}{extra}")
    else:
        click.echo(f"{body['ref']}: already {body['status']}{extra}")


def _request(method: str, url: str, headers: dict[str, str], token: str | None, role: str, **send: Any) -> object:
    """Send with a bearer token; the parsed answer of a 200/201, else RemoteError with the token masked."""
    if token:
        headers = {**headers, "Authorization": f"Bearer {token}"}
    try:
        response = requests.request(method, url, headers=headers, timeout=_TIMEOUT, **send)
    except requests.RequestException as exc:
        raise RemoteError(f"{url}: {exc.__class__.__name__}") from None
    try:
        body: object = response.json()
    except ValueError:
        body = response.text
    if response.status_code in (200, 201):
        return body
    message = refusal_message(url, response.status_code, body, role)
    if token:
        message = message.replace(token, "***")
    error = RemoteError(message)
    error.status = response.status_code  # type: ignore[attr-defined]
    error.problem = body if isinstance(body, dict) else None  # type: ignore[attr-defined]
    raise error


_HINTS = {
    "SignatureMissing": "sign the archive first (kgrid sign ARCHIVE --key KEY.key.pem)",
    "UntrustedSignature": "the server does not trust the key that signed it, or the archive changed after signing",
    "VersionConflict": "versions are immutable: publish a new version number",
    "IncompatibleChange": "a breaking change needs a new major version",
    "VectorsFailed": "run `kgrid validate` on the KO folder and fix its test vectors",
}


def refusal_message(url: str, status: int, body: object, role: str) -> str:
    """What the server said, faithfully: status, its problem type and detail, and a hint that fits.

    The hint follows the server's reason (its ``error`` member, or the detail of a role refusal),
    never the status alone: a 403 may be a missing role or a missing signature.
    """
    problem = body if isinstance(body, dict) else {}
    detail = str(problem.get("detail", problem.get("title", "")) if problem else body)[:500]
    kind = problem.get("error") if isinstance(problem.get("error"), str) else None
    title = problem.get("title") if isinstance(problem.get("title"), str) else None
    head = f"{url}: HTTP {status}" + (f" {title}" if title else "")
    message = f"{head}: {detail}" + (f" [{kind}]" if kind else "")
    if status == 401:
        hint = "no token, or one the server does not know: pass --token or set KGRID_TOKEN"
    elif kind in _HINTS:
        hint = _HINTS[kind]
    elif status == 403 and "role" in detail:
        hint = f"the token lacks the {role} role"
    else:
        hint = ""
    changes = problem.get("changes")
    if isinstance(changes, list) and changes:
        message += "".join(f"\n  change: {str(c)[:200]}" for c in changes[:20])
    return message + (f"\n  hint: {hint}" if hint else "")


@click.command()
@click.option("--name", required=True, help="Who the token is for: the name the audit log records.")
@click.option("--role", "roles", type=click.Choice(ROLES), multiple=True, required=True, help="Repeat for several.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the token to this new file (mode 0600) instead of printing it.",
)
def token(name: str, roles: tuple[str, ...], output: Path | None) -> None:
    """Create a bearer token and print the tokens.json entry holding only its sha256.

    The entry goes into the activator's tokens.json ({"tokens": [...]}); the token itself goes to
    its holder and is never stored by the server.
    """
    secret = generate_token()
    entry = {"name": name, "roles": sorted(set(roles)), "sha256": hash_token(secret)}
    if output is not None:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secret + "\n")
        click.echo(f"token: written to {output} (mode 0600); give it to {name}", err=True)
    else:
        click.echo(f"token: {secret}")
        click.echo(f"(give the token to {name}; it is shown once and the server stores only its digest)", err=True)
    click.echo(f"tokens.json entry: {json.dumps(entry)}")


@click.group()
def vectors() -> None:
    """Test vectors: regenerate their expected values from the KO's src/reference.py."""


@vectors.command(name="regenerate")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def vectors_regenerate(path: Path) -> None:
    """Recompute expected values from src/reference.py's expected(function, inputs), then re-seal.

    Only vectors whose "source" starts with src/reference.py are rewritten, and only the outputs
    they list; inputs reach expected() in the declared units with defaults filled in. Run it after
    every change to the model or the reference, then `kgrid validate` (which the new values must pass).
    """
    report = regenerate_vectors(path)
    click.echo(
        f"{path}: {report.recomputed} vector(s) recomputed from src/reference.py, {len(report.changed)} changed, "
        f"{report.kept} left as they were; re-sealed"
    )
    for name in report.changed:
        click.echo(f"  changed: {name}")


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


@click.command(name="build")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--seal-only", is_flag=True, help="Only regenerate service.yaml and the digests.")
def build_command(path: Path, seal_only: bool) -> None:
    """Rebuild a KO's ONNX from its source (needs torch), then re-seal its metadata."""
    from kgrid_py.curation.build import build_ko, seal

    if seal_only:
        seal(path)
        click.echo(f"{path}: sealed")
        return
    summary = build_ko(path)
    ko = KnowledgeObject.from_path(path)
    click.echo(f"{ko.ref}: built, digest {ko.content_digest}")
    if summary:
        click.echo(json.dumps(summary, indent=2, default=str))


COMMANDS: dict[str, click.Command] = {
    "build": build_command,
    "init": init,
    "pack": pack_command,
    "keygen": keygen,
    "sign": sign,
    "verify": verify,
    "publish": publish,
    "status": status,
    "token": token,
    "vectors": vectors,
}
"""Name -> command, for ``kgrid_py.cli`` to register: ``for n, c in COMMANDS.items(): cli.add_command(c, n)``."""
