"""Ed25519 signatures: keygen, sign, verify against a trust dir; forged or missing ones refused."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from archives import build_zip, entries_of, manifest_for, rebuild, refuse

from kgrid_py.curation.archive import MANIFEST_NAME, SIGNATURE_NAME, inspect, pack
from kgrid_py.curation.audit import read_audit
from kgrid_py.curation.errors import CurationError, SignatureMissing, UntrustedSignature, http_status
from kgrid_py.curation.publish import PublishPolicy, publish_archive
from kgrid_py.curation.signing import generate_keypair, load_private_key, load_trust_dir, sign_archive, verify_signature


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(private key, trust dir holding its public key)."""
    private, public = generate_keypair(tmp_path / "keys", "curator")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / public.name).write_bytes(public.read_bytes())
    return private, trust


@pytest.fixture
def signed(demo_path: Path, keys: tuple[Path, Path]) -> bytes:
    return sign_archive(pack(demo_path), load_private_key(keys[0]))


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path, "me")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(CurationError, match="refusing to overwrite"):
        generate_keypair(tmp_path, "me")


def test_sign_and_verify(signed: bytes, keys: tuple[Path, Path], demo_path: Path) -> None:
    info = inspect(signed)
    assert verify_signature(info, load_trust_dir(keys[1])).name == "curator.pub"
    assert info.manifest_digest == inspect(pack(demo_path)).manifest_digest  # signing adds, never changes
    assert sign_archive(pack(demo_path), load_private_key(keys[0])) == signed  # deterministic


def test_missing_signature(demo_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(SignatureMissing, match="not signed"):
        verify_signature(inspect(pack(demo_path)), load_trust_dir(keys[1]))


def test_signature_from_an_untrusted_key(demo_path: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    stranger, _ = generate_keypair(tmp_path / "stranger", "stranger")
    data = sign_archive(pack(demo_path), load_private_key(stranger))
    with pytest.raises(UntrustedSignature, match="not trusted"):
        verify_signature(inspect(data), load_trust_dir(keys[1]))


def test_forged_signature_bytes(signed: bytes, keys: tuple[Path, Path]) -> None:
    contents = entries_of(signed)
    document = json.loads(contents[SIGNATURE_NAME])
    document["signature"] = base64.b64encode(bytes(64)).decode()
    data = build_zip(
        [*((n, d) for n, d in contents.items() if n != SIGNATURE_NAME), (SIGNATURE_NAME, json.dumps(document).encode())]
    )
    with pytest.raises(UntrustedSignature, match="does not verify"):
        verify_signature(inspect(data), load_trust_dir(keys[1]))


def _tampered_but_signed(signed: bytes, claim_new_manifest: bool) -> bytes:
    """Change README.md, recompute the manifest, keep (or adjust) the original signature."""
    contents = entries_of(signed)
    signature = json.loads(contents.pop(SIGNATURE_NAME))
    contents["README.md"] = b"# Demo BMI\n\nNow safe for clinical use (it is not).\n"
    body = {n: d for n, d in contents.items() if n != MANIFEST_NAME}
    manifest = manifest_for(body)
    if claim_new_manifest:
        from kgrid_py.digest import sha256_bytes

        signature["manifest_sha256"] = sha256_bytes(manifest)
    return build_zip(
        [*sorted(body.items()), (MANIFEST_NAME, manifest), (SIGNATURE_NAME, json.dumps(signature).encode())]
    )


def test_signature_over_another_manifest(signed: bytes, keys: tuple[Path, Path]) -> None:
    with pytest.raises(UntrustedSignature, match="different manifest"):
        verify_signature(inspect(_tampered_but_signed(signed, False)), load_trust_dir(keys[1]))


def test_signature_claiming_the_new_manifest(signed: bytes, keys: tuple[Path, Path]) -> None:
    with pytest.raises(UntrustedSignature, match="does not verify"):
        verify_signature(inspect(_tampered_but_signed(signed, True)), load_trust_dir(keys[1]))


def test_trust_dir_refuses_private_keys(keys: tuple[Path, Path]) -> None:
    (keys[1] / "oops.pem").write_bytes(keys[0].read_bytes())
    with pytest.raises(CurationError, match="public keys only"):
        load_trust_dir(keys[1])


# -- through publish_archive, with a policy that requires signatures -------------------------------


def test_publish_requires_a_signature(demo_path: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    exc = refuse(pack(demo_path), tmp_path, SignatureMissing, "not signed", require_signature=True, trust_dir=keys[1])
    assert http_status(exc) == 403


def test_publish_refuses_a_forged_signature(signed: bytes, keys: tuple[Path, Path], tmp_path: Path) -> None:
    data = _tampered_but_signed(signed, True)
    exc = refuse(data, tmp_path, UntrustedSignature, "does not verify", require_signature=True, trust_dir=keys[1])
    assert http_status(exc) == 403


def test_publish_refuses_a_bad_signature_even_when_not_required(
    signed: bytes, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    refuse(_tampered_but_signed(signed, False), tmp_path, UntrustedSignature, "different manifest", trust_dir=keys[1])


def test_publish_accepts_a_trusted_signature(signed: bytes, keys: tuple[Path, Path], tmp_path: Path) -> None:
    shelf = tmp_path / "target"
    outcome = publish_archive(signed, shelf, PublishPolicy(require_signature=True, trust_dir=keys[1]), actor="alice")
    assert outcome.changed and outcome.signer == "curator.pub"
    record = read_audit(shelf / ".kgrid" / "audit.jsonl")[-1]
    assert record["signer"] == "curator.pub" and record["digest"] == inspect(signed).manifest_digest


def test_rebuilt_archive_without_signature_entry_is_unsigned(signed: bytes) -> None:
    contents = {n: d for n, d in entries_of(signed).items() if n != SIGNATURE_NAME}
    assert inspect(rebuild(contents)).signature is None
