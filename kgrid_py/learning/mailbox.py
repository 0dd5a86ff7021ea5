"""A folder mailbox: the whole state of a federated study, so anyone may stop and resume at any time.

Layout (every file written once, atomically: a temporary file renamed into place)::

    DIR/keys/coordinator.pub.pem, DIR/keys/<site>.pub.pem    public keys (checked against the plan's key ids)
    DIR/plans/0001.json, 0002.json, ...                       signed round plans
    DIR/messages/0001/<site>.json, ...                        signed site messages, one per site and round
    DIR/result.json                                           the converged estimate and its lineage

A site that was offline for days answers the latest plan when it is back; the coordinator's
``combine`` recomputes everything from these files each time (:func:`coordinate`), so there is no
other state to lose. The same functions serve the HTTP mailbox (``activator/routes/federation.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kgrid_py.curation.signing import TrustedKey, key_id
from kgrid_py.learning import federation as fd
from kgrid_py.learning.plans import FederationError, dumps, read

__all__ = ["SITE_NAME", "Mailbox", "add_site_token", "coordinate", "public_pem", "site_of_token"]

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ROUNDS_ON_DISK = 100


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_once(path: Path, data: bytes) -> bool:
    """Write ``data`` to a new ``path``; True if written, False if the same bytes were there already."""
    if path.exists():
        if path.read_bytes() == data:
            return False
        raise FederationError(f"{path} already holds a different document; documents are written once")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd_, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd_, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)  # fails if another writer got there first: never overwritten
    except FileExistsError:
        if path.read_bytes() != data:
            raise FederationError(f"{path} already holds a different document") from None
        return False
    finally:
        os.unlink(tmp)
    return True


class Mailbox:
    """One study's folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Mailbox({str(self.path)!r})"

    def plan_documents(self) -> list[dict[str, Any]]:
        folder = self.path / "plans"
        files = sorted(folder.glob("[0-9][0-9][0-9][0-9].json")) if folder.is_dir() else []
        if not files:
            raise FederationError(f"{self.path}: no plan yet (kgrid federate plan writes the first)")
        if [int(f.stem) for f in files] != list(range(1, len(files) + 1)):
            raise FederationError(f"{folder}: plans are not numbered 1..{len(files)} without a gap")
        return [read(f) for f in files[:MAX_ROUNDS_ON_DISK]]

    def latest_plan(self) -> dict[str, Any]:
        return self.plan_documents()[-1]

    def put_plan(self, document: dict[str, Any]) -> Path:
        path = self.path / "plans" / f"{document['payload']['round']:04d}.json"
        _write_once(path, dumps(document))
        return path

    def messages(self, round_: int) -> list[dict[str, Any]]:
        folder = self.path / "messages" / f"{round_:04d}"
        return [read(f) for f in sorted(folder.glob("*.json"))] if folder.is_dir() else []

    def put_message(self, document: dict[str, Any]) -> Path:
        """Store a site's message under its round and site name (the same bytes twice is a no-op)."""
        payload = document["payload"]
        site, round_ = payload.get("site"), payload.get("round")
        if not isinstance(site, str) or not SITE_NAME.match(site) or not isinstance(round_, int) or round_ < 1:
            raise FederationError(f"a message names site {site!r} and round {round_!r}: not a valid pair")
        path = self.path / "messages" / f"{round_:04d}" / f"{site}.json"
        _write_once(path, dumps(document))
        return path

    def put_keys(self, coordinator: Ed25519PublicKey, sites: dict[str, Ed25519PublicKey]) -> None:
        _write_once(self.path / "keys" / "coordinator.pub.pem", public_pem(coordinator))
        for site, key in sites.items():
            if not SITE_NAME.match(site):
                raise FederationError(f"site name {site!r}: letters, digits, '.', '_' and '-' only (max 64)")
            _write_once(self.path / "keys" / f"{site}.pub.pem", public_pem(key))

    def trusted(self, coordinator: Ed25519PublicKey) -> dict[str, TrustedKey]:
        """The coordinator's own key and the site keys stored here whose ids the (signed) plan names."""
        keys = {key_id(coordinator): TrustedKey(key_id(coordinator), "coordinator", coordinator)}
        folder = self.path / "keys"
        for path in sorted(folder.glob("*.pub.pem")) if folder.is_dir() else []:
            key = serialization.load_pem_public_key(path.read_bytes())
            if isinstance(key, Ed25519PublicKey):
                name = path.name.removesuffix(".pub.pem")
                keys.setdefault(key_id(key), TrustedKey(key_id(key), name, key))
        return keys

    def put_result(self, result: dict[str, Any]) -> Path:
        path = self.path / "result.json"
        _write_once(path, dumps(result))
        return path


def coordinate(
    mailbox: Mailbox, private_key: Ed25519PrivateKey
) -> tuple[fd.Final, list[dict[str, Any]]] | dict[str, Any]:
    """Replay the study from the mailbox; write the next plan and return it, or return the final fit.

    Raises :class:`~kgrid_py.learning.federation.MissingMessages` while sites have not answered.
    Returns (final, verified plans) once converged.
    """
    trusted = mailbox.trusted(private_key.public_key())
    documents = mailbox.plan_documents()
    plans = [fd.verify_plan(d, trusted) for d in documents]
    if plans[0]["coordinator"] != key_id(private_key.public_key()):
        raise FederationError("this key is not the study's coordinator key")
    messages = [mailbox.messages(p["round"]) for p in plans]
    result, records = fd.walk(plans, messages, trusted)
    if isinstance(result, fd.Final):
        return fd.Final(result.update, result.rounds, result.final_step, records), plans
    document = fd.next_plan(plans[-1], result[0], result[1], private_key)
    mailbox.put_plan(document)
    return document


# -- site tokens for the HTTP mailbox ----------------------------------------------------------------


def add_site_token(mailbox: Mailbox, site: str) -> str:
    """A new bearer token for ``site`` (printed once); only its sha256 is kept, in DIR/site-tokens.json.

    A site token reads this study's plans and posts that one site's messages, nothing else: it is not
    a publishing or admin token (those live in the activator's token store).
    """

    if not SITE_NAME.match(site):
        raise FederationError(f"site name {site!r}: letters, digits, '.', '_' and '-' only (max 64)")
    token = secrets.token_urlsafe(32)
    path = mailbox.path / "site-tokens.json"
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries[site] = hashlib.sha256(token.encode()).hexdigest()
    mailbox.path.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return token


def site_of_token(mailbox: Mailbox, token: str | None) -> str | None:
    """The site whose token this is (constant-time comparison over every entry), else None."""

    path = mailbox.path / "site-tokens.json"
    if not token or not path.exists():
        return None
    presented = hashlib.sha256(token.encode()).hexdigest()
    found = None
    for site, digest_ in json.loads(path.read_text()).items():
        if hmac.compare_digest(presented, digest_):
            found = site
    return found
