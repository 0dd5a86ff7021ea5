"""Publishing a KO archive into a local shelf: every check first, then one atomic rename.

:func:`publish_archive` is what ``kgrid publish --to DIR`` and the activator's ``POST /kos`` call.
In order, it refuses (raising the error in brackets; HTTP status for the activator after it):

1. an archive over the size limit                          [ArchiveTooLarge]        413
2. unsafe or malformed entries, a zip bomb, metadata paths
   or ONNX external data outside the KO, a file not
   matching its manifest digest                            [ArchiveRejected...]     422 (413)
3. no signature / an untrusted or forged one, when the
   policy requires one (a signature that is present is
   checked whenever a trust dir is configured)             [SignatureRejected]      403
4. invalid metadata, or a listed file missing or changed   [InvalidKO]              422
5. the same id and version already there, other content    [VersionConflict]        409
   (the identical content again is a no-op: ``changed`` False, 200)
6. a breaking change against the previous version without
   a new major version                                     [IncompatibleChange]     422
7. no test vectors, or any of them failing                 [VectorsFailed]          422

A new version answers 201. Unpacking happens in ``<shelf>/.kgrid/staging/`` and the finished
folder is renamed to ``<shelf>/<id>/<version>``, so a refusal leaves the shelf exactly as it was
and nothing half-written is ever visible. A ``draft`` KO becomes ``active`` on publication
(``PublishPolicy.activate``). Every attempt, refused or not, is appended to the audit log.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import semantic_version

from kgrid_py.archive import ArchiveInfo, ArchiveLimits, check_model_references, collect_files, extract, inspect
from kgrid_py.audit import append_audit, audit_path, shelf_lock, state_dir, write_json
from kgrid_py.compat import check_version
from kgrid_py.curator_errors import ArchiveTooLarge, CurationError, VectorsFailed, VersionConflict, http_status
from kgrid_py.digest import canonical_json, sha256_bytes, sha256_file
from kgrid_py.errors import KgridError
from kgrid_py.ko import METADATA_FILE, KnowledgeObject, read_metadata, verify_files
from kgrid_py.metadata import KOMetadata
from kgrid_py.shelf import Shelf, ShelfEntry
from kgrid_py.signing import load_trust_dir, verify_signature

__all__ = ["PublishOutcome", "PublishPolicy", "content_identity", "http_status", "publish_archive"]

MUTABLE_FIELDS = ("status", "successor")


@dataclass(frozen=True)
class PublishPolicy:
    """What a shelf demands of an archive before it serves it."""

    require_signature: bool = False
    trust_dir: Path | None = None
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    check_compatibility: bool = True
    run_vectors: bool = True
    activate: bool = True
    audit_log: Path | None = None
    """Where to append the audit log; default ``<shelf>/.kgrid/audit.jsonl``."""


@dataclass(frozen=True)
class PublishOutcome:
    """What publishing did: ``changed`` is False when the identical version was already there."""

    ko_id: str
    version: str
    digest: str
    path: Path
    changed: bool
    status: str
    signer: str | None = None
    changes: list[str] = field(default_factory=list)
    vectors_passed: int = 0

    @property
    def ref(self) -> str:
        return f"{self.ko_id}@{self.version}"

    @property
    def http_status(self) -> int:
        return 201 if self.changed else 200

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.ko_id,
            "version": self.version,
            "digest": self.digest,
            "changed": self.changed,
            "status": self.status,
            "signer": self.signer,
            "changes": self.changes,
            "vectors_passed": self.vectors_passed,
        }


def publish_archive(
    data: bytes, shelf: Path, policy: PublishPolicy | None = None, actor: str = "unknown"
) -> PublishOutcome:
    """Verify an archive and add its KO version to ``shelf``, or refuse with the reason.

    ``actor`` is who asked (a token's principal name, a user name): it goes to the audit log.
    Raises the errors listed in the module docstring; :func:`http_status` maps each to HTTP.
    """
    policy = policy or PublishPolicy()
    shelf = Path(shelf)
    shelf.mkdir(parents=True, exist_ok=True)
    log = policy.audit_log or audit_path(shelf)
    archive_digest = sha256_bytes(data)
    info: ArchiveInfo | None = None
    try:
        if len(data) > policy.limits.max_archive_bytes:
            raise ArchiveTooLarge(f"archive is {len(data)} bytes, over the limit of {policy.limits.max_archive_bytes}")
        info = inspect(data, policy.limits)
        signer = _check_signature(info, policy)
        with shelf_lock(shelf):
            outcome = _publish_locked(data, info, shelf, policy, signer)
    except KgridError as exc:
        append_audit(
            log,
            actor=actor,
            action="publish",
            outcome="refused",
            ref=info.ref if info else None,
            digest=info.manifest_digest if info else None,
            archive_sha256=archive_digest,
            reason=str(exc),
            http_status=http_status(exc),
        )
        raise
    append_audit(
        log,
        actor=actor,
        action="publish",
        outcome="published" if outcome.changed else "unchanged",
        ref=outcome.ref,
        digest=outcome.digest,
        archive_sha256=archive_digest,
        signer=outcome.signer,
        status=outcome.status,
    )
    return outcome


def _check_signature(info: ArchiveInfo, policy: PublishPolicy) -> str | None:
    if policy.require_signature and policy.trust_dir is None:
        raise CurationError("the publish policy requires signatures but names no trust dir")
    if policy.trust_dir is None or (info.signature is None and not policy.require_signature):
        return None
    return verify_signature(info, load_trust_dir(policy.trust_dir)).name


def _publish_locked(
    data: bytes, info: ArchiveInfo, shelf: Path, policy: PublishPolicy, signer: str | None
) -> PublishOutcome:
    staging = state_dir(shelf) / "staging" / secrets.token_hex(8)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        extract(data, staging, policy.limits)
        raw, metadata = read_metadata(staging)
        verify_files(staging, metadata)
        check_model_references(staging, raw)
        versions = Shelf(shelf).versions(info.ko_id)
        wanted = semantic_version.Version(info.version)
        existing = next((e for e in versions if e.semver == wanted), None)
        target = shelf / info.ko_id / info.version
        if existing is not None:
            if content_identity(existing.path) != content_identity(staging):
                raise VersionConflict(
                    f"{info.ref} is already published with different content; versions are immutable: "
                    "publish a new version instead"
                )
            return PublishOutcome(
                info.ko_id, info.version, info.manifest_digest, existing.path, False, existing.status, signer
            )
        if target.exists():
            raise VersionConflict(f"{target} exists but is not a readable KO; remove it by hand first")
        changes = _check_compat(versions, wanted, metadata) if policy.check_compatibility else []
        passed = _run_vectors(staging, metadata) if policy.run_vectors else 0
        status = metadata.status
        if policy.activate and status == "draft":
            status = set_lifecycle_fields(staging, status="active")["status"]
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)
        write_json(
            state_dir(shelf) / "records" / info.ko_id / f"{info.version}.json",
            {"ref": info.ref, "manifest_sha256": info.manifest_digest, "signer": signer, "signature": info.signature},
        )
        return PublishOutcome(
            info.ko_id, info.version, info.manifest_digest, target, True, status, signer, changes, passed
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _check_compat(versions: list[ShelfEntry], wanted: semantic_version.Version, metadata: KOMetadata) -> list[str]:
    earlier = [e for e in versions if e.semver < wanted]
    if not earlier:
        return []
    previous = max(earlier, key=lambda e: e.semver)
    _, old = read_metadata(previous.path)
    return [str(c) for c in check_version(old, metadata)]


def _run_vectors(path: Path, metadata: KOMetadata) -> int:
    if metadata.tests is None:
        raise VectorsFailed(f"{metadata.identifier}@{metadata.version} has no test vectors; they are required")
    outcomes = KnowledgeObject.from_path(path).test()
    failed = [o for o in outcomes if not o.passed]
    if failed:
        details = "; ".join(f"{o.vector.name}: {o.detail}" for o in failed[:5])
        raise VectorsFailed(f"{metadata.identifier}@{metadata.version}: {len(failed)} test vector(s) failed: {details}")
    return len(outcomes)


def set_lifecycle_fields(ko_dir: Path, **fields: str) -> dict[str, Any]:
    """Set ``MUTABLE_FIELDS`` in a KO folder's metadata, validated before it is written; the new raw metadata."""
    assert set(fields) <= set(MUTABLE_FIELDS), fields
    file = ko_dir / METADATA_FILE
    raw: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    raw.update(fields)
    KOMetadata.model_validate(raw)
    write_json(file, raw)
    return raw


def content_identity(ko_dir: Path) -> str:
    """A digest of a KO folder's content that ignores its lifecycle fields (status, successor).

    Two folders with equal identities hold the same KO version: re-publishing it is a no-op.
    """
    files: dict[str, str] = {}
    for name, path in collect_files(ko_dir):
        if name == METADATA_FILE:
            raw = json.loads(path.read_text(encoding="utf-8"))
            for key in MUTABLE_FIELDS:
                raw.pop(key, None)
            files[name] = sha256_bytes(canonical_json(raw))
        else:
            files[name] = sha256_file(path)
    return sha256_bytes(canonical_json(files))
