"""Subject keys: a patient id never enters the store, only its HMAC-SHA256 under a per-site secret.

The same secret turns an outcome file's patient ids into the same keys, which is what links a
call to what happened afterwards. The secret comes from a file (``--subject-secret-file``) or
``$KGRID_SUBJECT_SECRET``; it must be at least 32 bytes, and it is never logged or shown in a repr.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

__all__ = ["MIN_SECRET_BYTES", "SECRET_ENV", "SubjectKeyer", "SubjectSecretError"]

MIN_SECRET_BYTES = 32
MAX_SECRET_BYTES = 4096
MAX_SUBJECT_CHARS = 256
SECRET_ENV = "KGRID_SUBJECT_SECRET"


class SubjectSecretError(ValueError):
    """Raised when the subject secret is missing, too short, or a patient id is unusable."""


class SubjectKeyer:
    """Keys patient ids for one site: ``key(patient_id) -> 64 hex characters``."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes | str) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        raw = raw.strip()  # a trailing newline from `echo` or an editor is not part of the secret
        if len(raw) < MIN_SECRET_BYTES:
            raise SubjectSecretError(
                f"the subject secret is {len(raw)} bytes; at least {MIN_SECRET_BYTES} are required "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )
        if len(raw) > MAX_SECRET_BYTES:
            raise SubjectSecretError(f"the subject secret is over {MAX_SECRET_BYTES} bytes; is it the right file?")
        self._secret = raw

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SubjectKeyer:
        where = Path(path)
        try:
            if where.stat().st_size > MAX_SECRET_BYTES * 2:
                raise SubjectSecretError(f"subject secret file {where} is too large to be a secret")
            return cls(where.read_bytes())
        except OSError as exc:
            raise SubjectSecretError(f"cannot read subject secret file {where}: {exc.strerror}") from None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> SubjectKeyer | None:
        """The keyer from ``$KGRID_SUBJECT_SECRET``, or None where it is unset."""
        value = (environ if environ is not None else os.environ).get(SECRET_ENV)
        return cls(value) if value else None

    @classmethod
    def resolve(cls, secret_file: str | os.PathLike[str] | None = None) -> SubjectKeyer | None:
        """A file when given, else the environment variable, else None (subjects then refused)."""
        return cls.from_file(secret_file) if secret_file is not None else cls.from_env()

    @staticmethod
    def check(patient_id: str | int) -> str:
        """The id's text form (whitespace removed); SubjectSecretError where it cannot be a patient id."""
        if type(patient_id) is str:  # the usual case, first: every captured call with a subject comes here twice
            text = patient_id.strip()
        elif isinstance(patient_id, bool) or not isinstance(patient_id, str | int):
            raise SubjectSecretError(f"a subject id must be text, got {type(patient_id).__name__}")
        else:
            text = str(patient_id).strip()
        if not text:
            raise SubjectSecretError("a subject id is empty")
        if len(text) > MAX_SUBJECT_CHARS:
            raise SubjectSecretError(f"a subject id is over {MAX_SUBJECT_CHARS} characters")
        return text

    def key(self, patient_id: str | int) -> str:
        """The subject key of ``patient_id`` (its text form, surrounding whitespace removed)."""
        return hmac.digest(self._secret, self.check(patient_id).encode(), "sha256").hex()

    def __repr__(self) -> str:
        return "<SubjectKeyer secret=***>"

    def __reduce__(self) -> object:
        raise TypeError("a SubjectKeyer is not picklable: its secret stays in this process")
