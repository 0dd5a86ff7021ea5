"""Ed25519 signatures over a KO archive's manifest digest.

The signature travels inside the archive as ``signature.json``, an entry the manifest does not
list (so signing does not change what is signed)::

    {"format": "kgrid-signature/1", "algorithm": "ed25519", "key_id": "<16 hex>",
     "manifest_sha256": "<64 hex>", "signature": "<base64>"}

The signed message is ``b"kgrid-archive-signature/1\\n" + manifest_sha256`` (ASCII hex): the
prefix keeps these signatures from meaning anything anywhere else. The manifest lists every
file's sha256, so the signature covers every byte of the KO. A trust dir is a folder of public
keys (``*.pem``); ``key_id`` is the first 16 hex digits of the sha256 of the raw public key.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kgrid_py.curation.archive import SIGNATURE_NAME, ArchiveInfo, ArchiveLimits, inspect, replace_entry
from kgrid_py.curation.errors import CurationError, SignatureMissing, UntrustedSignature
from kgrid_py.digest import canonical_json, sha256_bytes

__all__ = [
    "SIGNATURE_FORMAT",
    "TrustedKey",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_trust_dir",
    "sign_archive",
    "signature_message",
    "verify_signature",
]

SIGNATURE_FORMAT = "kgrid-signature/1"
_CONTEXT = b"kgrid-archive-signature/1\n"


@dataclass(frozen=True)
class TrustedKey:
    """A public key from the trust dir, named by its file."""

    key_id: str
    name: str
    key: Ed25519PublicKey


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_bytes(raw)[:16]


def signature_message(manifest_digest: str) -> bytes:
    return _CONTEXT + manifest_digest.encode("ascii")


def generate_keypair(directory: Path, name: str = "kgrid") -> tuple[Path, Path]:
    """Write ``NAME.key.pem`` (private, mode 0600) and ``NAME.pub.pem``; never overwrite a key."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key.pem", directory / f"{name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise CurationError(f"{path} already exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    _write_new(public_path, public_pem, 0o644)
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise CurationError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CurationError(f"{path}: not an Ed25519 key")
    return key


def sign_archive(data: bytes, private_key: Ed25519PrivateKey, limits: ArchiveLimits | None = None) -> bytes:
    """The archive with ``signature.json`` set to a signature over its manifest digest."""
    info = inspect(data, limits)
    document = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "manifest_sha256": info.manifest_digest,
        "signature": base64.b64encode(private_key.sign(signature_message(info.manifest_digest))).decode(),
    }
    return replace_entry(data, SIGNATURE_NAME, canonical_json(document), limits)


def load_trust_dir(directory: Path) -> dict[str, TrustedKey]:
    """Every Ed25519 public key in ``directory/*.pem``, by key id; anything else there is an error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CurationError(f"trust dir {directory} does not exist")
    keys: dict[str, TrustedKey] = {}
    for path in sorted(directory.glob("*.pem")):
        data = path.read_bytes()
        if b"PRIVATE KEY" in data:
            raise CurationError(f"{path} is a private key: a trust dir holds public keys only")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise CurationError(f"{path}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise CurationError(f"{path}: not an Ed25519 public key")
        keys[key_id(key)] = TrustedKey(key_id(key), path.name.removesuffix(".pem"), key)
    return keys


def verify_signature(info: ArchiveInfo, trusted: dict[str, TrustedKey]) -> TrustedKey:
    """The trusted key that signed this archive's manifest; else :class:`SignatureMissing` or
    :class:`UntrustedSignature` saying why."""
    document = info.signature
    if document is None:
        raise SignatureMissing(f"{info.ref}: the archive is not signed and a signature is required")
    if document.get("format") != SIGNATURE_FORMAT or document.get("algorithm") != "ed25519":
        raise UntrustedSignature(f"{info.ref}: {SIGNATURE_NAME} is not a {SIGNATURE_FORMAT} ed25519 signature")
    if document.get("manifest_sha256") != info.manifest_digest:
        raise UntrustedSignature(f"{info.ref}: the signature is for a different manifest (the archive was changed)")
    signer = trusted.get(str(document.get("key_id")))
    if signer is None:
        raise UntrustedSignature(f"{info.ref}: signed by key {document.get('key_id')!r}, which is not trusted")
    try:
        raw = base64.b64decode(str(document.get("signature", "")), validate=True)
        signer.key.verify(raw, signature_message(info.manifest_digest))
    except (InvalidSignature, binascii.Error, ValueError):
        raise UntrustedSignature(
            f"{info.ref}: the signature does not verify with key {signer.name} (forged or altered)"
        ) from None
    return signer
