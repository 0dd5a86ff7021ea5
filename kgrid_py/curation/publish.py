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

Before 5, a version that differs from one on the shelf only in semver build metadata
(``1.0.0+anything`` beside ``1.0.0``) is refused as a VersionConflict (409): build metadata
has no precedence, so it would dodge both immutability and the breaking-change check. A KO id
that names one of the activator's own routes (``metrics``, ``kos``, ...) is refused at 2.

A new version answers 201. Unpacking happens in ``<shelf>/.kgrid/staging/`` and the finished
folder is renamed to ``<shelf>/<id>/<version>``, so a refusal leaves the shelf exactly as it was
and nothing half-written is ever visible. A ``draft`` KO becomes ``active`` on publication
(``PublishPolicy.activate``). Every attempt, refused or not, is appended to the audit log; the
``published`` entry is journalled durably before the rename, so a process killed at any point
leaves either nothing visible or a visible version whose entry :func:`kgrid_py.curation.audit.recover`
writes at the next open of the shelf (see :mod:`kgrid_py.curation.audit`).
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

from kgrid_py.curation.archive import ArchiveInfo, ArchiveLimits, check_model_references, extract, inspect
from kgrid_py.curation.audit import (
    append_audit,
    audit_path,
    complete_pending,
    crash_point,
    fsync_dir,
    read_audit,
    recover,
    shelf_lock,
    state_dir,
    write_json,
    write_pending,
)
from kgrid_py.curation.compat import check_version
from kgrid_py.curation.errors import ArchiveTooLarge, CurationError, VectorsFailed, VersionConflict, http_status
from kgrid_py.curation.signing import load_trust_dir, verify_signature
from kgrid_py.digest import LIFECYCLE_FIELDS, folder_identity, sha256_bytes
from kgrid_py.errors import KgridError
from kgrid_py.ko import METADATA_FILE, KnowledgeObject, read_metadata, verify_files
from kgrid_py.metadata import KOMetadata
from kgrid_py.shelf import Shelf, ShelfEntry

__all__ = ["PublishOutcome", "PublishPolicy", "content_identity", "http_status", "publish_archive"]

MUTABLE_FIELDS = LIFECYCLE_FIELDS


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
            recover(shelf, locked=True)
            outcome = _publish_locked(data, info, shelf, policy, signer, actor, log, archive_digest)
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
    return outcome


def _check_signature(info: ArchiveInfo, policy: PublishPolicy) -> str | None:
    if policy.require_signature and policy.trust_dir is None:
        raise CurationError("the publish policy requires signatures but names no trust dir")
    if policy.trust_dir is None or (info.signature is None and not policy.require_signature):
        return None
    return verify_signature(info, load_trust_dir(policy.trust_dir)).name


def _publish_locked(
    data: bytes,
    info: ArchiveInfo,
    shelf: Path,
    policy: PublishPolicy,
    signer: str | None,
    actor: str,
    log: Path,
    archive_digest: str,
) -> PublishOutcome:
    staging = state_dir(shelf) / "staging" / secrets.token_hex(8)
    staging.parent.mkdir(parents=True, exist_ok=True)
    audit = {
        "actor": actor,
        "action": "publish",
        "ref": info.ref,
        "digest": info.manifest_digest,
        "archive_sha256": archive_digest,
        "signer": signer,
    }
    record = {"ref": info.ref, "manifest_sha256": info.manifest_digest, "signer": signer, "signature": info.signature}
    try:
        extract(data, staging, policy.limits)
        crash_point("extracted")
        raw, metadata = read_metadata(staging)
        verify_files(staging, metadata)
        check_model_references(staging, raw)
        versions = Shelf(shelf).versions(info.ko_id)
        wanted = semantic_version.Version(info.version)
        existing = next((e for e in versions if e.semver == wanted), None)
        target = shelf / info.ko_id / info.version
        if existing is not None:
            if folder_identity(existing.path) != folder_identity(staging):
                raise VersionConflict(
                    f"{info.ref} is already published with different content; versions are immutable: "
                    "publish a new version instead"
                )
            _repair_or_note(shelf, info, existing, record, {**audit, "status": existing.status}, log)
            return PublishOutcome(
                info.ko_id, info.version, info.manifest_digest, existing.path, False, existing.status, signer
            )
        _refuse_build_variant(info.ref, wanted, versions)
        if target.exists():
            raise VersionConflict(f"{target} exists but is not a readable KO; remove it by hand first")
        changes = _check_compat(versions, wanted, metadata) if policy.check_compatibility else []
        passed = _run_vectors(staging, metadata) if policy.run_vectors else 0
        status = metadata.status
        if policy.activate and status == "draft":
            status = set_lifecycle_fields(staging, status="active")["status"]
        crash_point("checked")
        audit.update(outcome="published", status=status)
        pending = write_pending(shelf, info.ko_id, info.version, info.manifest_digest, record, audit, log)
        crash_point("journalled")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)
        fsync_dir(target.parent)
        crash_point("renamed")
        complete_pending(shelf, pending)
        return PublishOutcome(
            info.ko_id, info.version, info.manifest_digest, target, True, status, signer, changes, passed
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _refuse_build_variant(ref: str, wanted: semantic_version.Version, versions: list[ShelfEntry]) -> None:
    """Refuse a version equal to one on the shelf but for build metadata (``1.0.0+x`` beside ``1.0.0``).

    Semver gives build metadata no precedence, so such a pair could be neither ordered nor told
    apart by a range: it would slip past immutability and the breaking-change check.
    """
    core = _precedence(wanted)
    clash = next((e for e in versions if _precedence(e.semver) == core), None)
    if clash is not None:
        raise VersionConflict(
            f"{ref} differs from the published {clash.ko_id}@{clash.version} only in build metadata, which "
            "semantic versioning ignores; publish a new version number instead"
        )


def _precedence(version: semantic_version.Version) -> tuple[object, ...]:
    return (version.major, version.minor, version.patch, tuple(version.prerelease))


def _repair_or_note(
    shelf: Path, info: ArchiveInfo, existing: ShelfEntry, record: dict[str, Any], audit: dict[str, Any], log: Path
) -> None:
    """Identical content again: log ``unchanged``, or repair a version published without its record.

    A shelf written by an older kgrid, killed mid-publication, may serve a version with no signer
    record or no ``published`` entry; republishing the identical archive restores both.
    """
    record_file = state_dir(shelf) / "records" / info.ko_id / f"{info.version}.json"
    logged = any(
        r.get("action") == "publish" and r.get("outcome") == "published" and r.get("ref") == info.ref
        for r in read_audit(log, strict=False)
    )
    if record_file.exists() and logged:
        append_audit(log, **audit, outcome="unchanged")
        return
    if not record_file.exists():
        write_json(record_file, record)
    append_audit(log, **audit, outcome="published", repaired=True)


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
    """The identity digest of a KO folder (:func:`kgrid_py.digest.folder_identity`).

    Two folders with equal identities hold the same KO version: re-publishing it is a no-op.
    """
    return folder_identity(ko_dir)
