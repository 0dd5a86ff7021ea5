"""Signed federation documents: the coordinator's round plans and the sites' messages.

A document on disk (or over HTTP) is ``{"payload": {...}, "key_id": "<16 hex>", "signature":
"<base64>"}``. The Ed25519 signature is over ``CONTEXT + kind + "\\n" + sha256(canonical JSON of the
payload)``, so a plan's signature can never pass for a message's, nor a KO archive's. The
payload's digest is its identity: a message names the plan digest it answers, and the next plan
names the previous one, so a study is a hash chain. Numbers are JSON float64 written by Python's
``repr`` (they round-trip exactly); NaN and infinity are refused on the way out and in.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kgrid_py.curation.signing import TrustedKey, key_id
from kgrid_py.digest import canonical_json, sha256_bytes
from kgrid_py.learning.recalibration import RecalibrationError

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MESSAGE_FORMAT",
    "PLAN_FORMAT",
    "FederationError",
    "ForgedDocument",
    "digest",
    "dumps",
    "parse",
    "read",
    "sign",
    "verify",
]

PLAN_FORMAT = "kgrid-federation-plan/1"
MESSAGE_FORMAT = "kgrid-federation-message/1"
MAX_DOCUMENT_BYTES = 1 << 20  # a message is a few KB whatever the site's size
_CONTEXT = b"kgrid-federation-signature/1\n"


class FederationError(RecalibrationError):
    """A federation document or step is refused (wrong study, round, site, KO, or bad content)."""


class ForgedDocument(FederationError):
    """A signature does not verify, or the signer is not the one the plan names."""


def _no_constant(name: str) -> float:
    raise FederationError(f"{name} is not a number JSON may carry; float64 values must be finite")


def digest(payload: dict[str, Any]) -> str:
    """sha256 of the payload's canonical JSON: the document's identity."""
    _check_finite(payload)
    return sha256_bytes(canonical_json(payload))


def _check_finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise FederationError(f"{value!r} cannot be sent: values must be finite float64")
    if isinstance(value, dict):
        for v in value.values():
            _check_finite(v)
    elif isinstance(value, list):
        for v in value:
            _check_finite(v)


def _message(kind: str, payload_digest: str) -> bytes:
    return _CONTEXT + kind.encode() + b"\n" + payload_digest.encode()


def sign(payload: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed document for ``payload`` (its ``format`` says plan or message)."""
    signature = private_key.sign(_message(payload["format"], digest(payload)))
    return {
        "payload": payload,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(signature).decode(),
    }


def dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=1, sort_keys=True, allow_nan=False).encode() + b"\n"


def parse(data: bytes, what: str) -> dict[str, Any]:
    """A signed document's JSON (size-capped, finite numbers), not yet verified."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FederationError(f"{what}: {len(data)} bytes; a federation document is at most {MAX_DOCUMENT_BYTES}")
    try:
        document = json.loads(data, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FederationError(f"{what}: not JSON ({exc})") from None
    if (
        not isinstance(document, dict)
        or not isinstance(document.get("payload"), dict)
        or not isinstance(document.get("key_id"), str)
        or not isinstance(document.get("signature"), str)
    ):
        raise FederationError(f"{what}: expected an object with payload, key_id and signature")
    return document


def read(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise FederationError(f"{path}: {size} bytes; a federation document is at most {MAX_DOCUMENT_BYTES}")
        return parse(path.read_bytes(), str(path))
    except OSError as exc:
        raise FederationError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def verify(document: dict[str, Any], trusted: dict[str, TrustedKey], expected_key: str | None, what: str) -> str:
    """The payload digest, once the signature verifies with ``expected_key`` (or any trusted key)."""
    payload = document["payload"]
    signer = document["key_id"]
    if expected_key is not None and signer != expected_key:
        raise ForgedDocument(f"{what}: signed by key {signer}, but the plan expects key {expected_key}")
    key = trusted.get(signer)
    if key is None:
        raise ForgedDocument(f"{what}: signed by key {signer}, which is not in the trust dir")
    if payload.get("format") not in (PLAN_FORMAT, MESSAGE_FORMAT):
        raise FederationError(f"{what}: unknown format {payload.get('format')!r}")
    payload_digest = digest(payload)
    try:
        key.key.verify(
            base64.b64decode(document["signature"], validate=True), _message(payload["format"], payload_digest)
        )
    except (InvalidSignature, binascii.Error, ValueError):
        raise ForgedDocument(f"{what}: the signature does not verify (altered or forged)") from None
    return payload_digest
