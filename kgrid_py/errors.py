"""The exceptions kgrid_py raises.

    KgridError
    ├── InvalidKO          the KO folder or its metadata is malformed
    │   └── IntegrityError a file does not match the digest its metadata lists
    ├── NotFound           no KO, version, function or file answers a reference
    ├── RetiredVersion     the version asked for is retired (``allow_retired=True`` to run it anyway)
    ├── InputError         a call's inputs are unusable; ``.errors`` has one entry per field
    ├── UnitMismatch       a UCUM unit cannot be parsed or converted (kgrid_py.units)
    ├── InvalidReference   a KO reference cannot be parsed (kgrid_py.shelf)
    ├── CurationError      packing, signing, publishing or lifecycle refused (kgrid_py.curation.errors)
    ├── FhirDataError      FHIR data that cannot be used (kgrid_py.fhir)
    └── ScoringError       a file cannot be scored as asked (kgrid_py.population.scoring)

Each subclasses ``ValueError`` or ``LookupError`` too, so callers that catch the builtins still work.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FieldError", "InputError", "IntegrityError", "InvalidKO", "KgridError", "NotFound", "RetiredVersion"]


class KgridError(Exception):
    """Base of every error kgrid_py raises on purpose."""


class InvalidKO(KgridError, ValueError):
    """Raised when a knowledge object's files or metadata are malformed."""


class IntegrityError(InvalidKO):
    """Raised when a file's bytes do not match the sha256 digest in the metadata."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class NotFound(KgridError, LookupError):
    """Raised when a reference names no KO, version, function or file that exists."""

    def __init__(self, message: str, available: list[str] | None = None) -> None:
        super().__init__(message)
        self.available = available or []

    def __str__(self) -> str:
        text = super().__str__()
        if self.available:
            text += f" (available: {', '.join(self.available)})"
        return text


class RetiredVersion(KgridError, LookupError):
    """Raised when loading a retired KO version without ``allow_retired=True``; names its successor."""

    def __init__(self, ref: str, successor: str | None) -> None:
        self.ref = ref
        self.successor = successor
        then = f"use its successor {successor}" if successor else "it names no successor"
        super().__init__(
            f"{ref} is retired and must not be used for care: {then} "
            "(to run it anyway, e.g. to reproduce an old result, pass allow_retired=True or --allow-retired)"
        )


@dataclass(frozen=True)
class FieldError:
    """One problem with one input field."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class InputError(KgridError, ValueError):
    """Raised when a call's inputs cannot be used; every bad field is reported at once."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
