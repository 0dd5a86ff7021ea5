"""The exceptions the curator pipeline raises: pack, sign, publish, retire, fetch.

    KgridError                        (kgrid_py.errors)
    └── CurationError                 a curator operation was refused; the message says why
        ├── ArchiveRejected           the archive is unsafe or malformed               422
        │   ├── ArchiveTooLarge       over a size limit, or a zip bomb                 413
        │   └── ArchiveDigestMismatch a file does not match its manifest digest        422
        ├── SignatureRejected         the signature policy refuses the archive         403
        │   ├── SignatureMissing      a signature is required and there is none        403
        │   └── UntrustedSignature    forged, or from a key not in the trust dir       403
        ├── VersionConflict           same id and version, different content           409
        ├── IncompatibleChange        a breaking change without a new major version    422
        ├── VectorsFailed             the KO's own test vectors do not pass            422
        ├── LifecycleError            a status change that is not allowed              409
        │   └── InvalidDate           a sunset or other date that is not ISO 8601      422
        ├── RemoteError               a remote shelf or activator failed or refused    502
        └── AuthError                 a publishing or admin credential problem
            ├── Unauthorized          no token, or one nobody issued                   401
            └── Forbidden             a valid token without the needed role           403

The numbers are the HTTP statuses the activator should answer; :func:`http_status` gives them.
The library itself speaks no HTTP. Every class also subclasses ``ValueError`` or
``PermissionError`` where a naive caller would expect one.
"""

from __future__ import annotations

from collections.abc import Sequence

from kgrid_py.errors import InvalidKO, KgridError, NotFound

__all__ = [
    "ArchiveDigestMismatch",
    "ArchiveRejected",
    "ArchiveTooLarge",
    "AuthError",
    "CurationError",
    "Forbidden",
    "IncompatibleChange",
    "InvalidDate",
    "LifecycleError",
    "RemoteError",
    "SignatureMissing",
    "SignatureRejected",
    "Unauthorized",
    "UntrustedSignature",
    "VectorsFailed",
    "VersionConflict",
    "http_status",
]


class CurationError(KgridError):
    """Base of every refusal by the curator pipeline."""

    status_code = 400


class ArchiveRejected(CurationError, ValueError):
    """Raised when an archive is malformed or unsafe to unpack (paths, links, duplicates...)."""

    status_code = 422


class ArchiveTooLarge(ArchiveRejected):
    """Raised when an archive, an entry or the total expansion exceeds a limit."""

    status_code = 413


class ArchiveDigestMismatch(ArchiveRejected):
    """Raised when an entry's bytes do not match the sha256 in the archive's manifest."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class SignatureRejected(CurationError, PermissionError):
    """Raised when the signature policy refuses an archive."""

    status_code = 403


class SignatureMissing(SignatureRejected):
    """Raised when a signature is required and the archive carries none."""


class UntrustedSignature(SignatureRejected):
    """Raised when a signature does not verify, or its key is not trusted."""


class VersionConflict(CurationError, ValueError):
    """Raised when a KO version already exists on the shelf with different content."""

    status_code = 409


class IncompatibleChange(CurationError, ValueError):
    """Raised when a version breaks its predecessor's interface without a new major version."""

    status_code = 422

    def __init__(self, message: str, changes: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.changes = list(changes)


class VectorsFailed(CurationError, ValueError):
    """Raised when a KO's own test vectors fail (or it has none) at publication."""

    status_code = 422


class LifecycleError(CurationError, ValueError):
    """Raised when a status change is not allowed (e.g. reviving a retired version)."""

    status_code = 409


class InvalidDate(LifecycleError):
    """Raised when a lifecycle date (a sunset) is not an ISO 8601 date or date-time."""

    status_code = 422


class RemoteError(CurationError):
    """Raised when a remote shelf or activator cannot be reached or refuses a request."""

    status_code = 502


class AuthError(CurationError, PermissionError):
    """Base of credential problems; the message never contains the token."""

    status_code = 401


class Unauthorized(AuthError):
    """Raised when no token was given, or the token matches none issued."""


class Forbidden(AuthError):
    """Raised when a valid token lacks the role the operation needs."""

    status_code = 403


def http_status(exc: BaseException) -> int:
    """The HTTP status for an error the curator pipeline (or the KO loader under it) raised."""
    if isinstance(exc, CurationError):
        return exc.status_code
    if isinstance(exc, InvalidKO):  # bad metadata, a listed file missing or changed
        return 422
    if isinstance(exc, NotFound):
        return 404
    return 500
