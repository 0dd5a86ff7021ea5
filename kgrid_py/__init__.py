"""kgrid_py: computable knowledge objects — versioned ONNX models you load and call like functions.

import kgrid_py
ko = kgrid_py.load("kfre@1", shelf="knowledge_objects")
out = ko.call("four-variable", {"age": 63, "sex": "female", "egfr": 45, "uacr": 30})

The package is layered (the contracts are in pyproject.toml and checked by ``lint-imports``):
the core modules at this level (errors, digest, metadata, schema, units, inputs, columns,
plausibility, runtime, imaging, fhir, openapi, ko, vectors, shelf) import nothing above them;
:mod:`kgrid_py.curation`, :mod:`kgrid_py.population` and :mod:`kgrid_py.learning` build on the
core; :mod:`kgrid_py.cli` sits on top. This module is the public face over all of them.
"""

from __future__ import annotations

import os
from typing import Any

from kgrid_py import shelf as _shelf
from kgrid_py.curation.errors import CurationError
from kgrid_py.errors import FieldError, InputError, IntegrityError, InvalidKO, KgridError, NotFound, RetiredVersion
from kgrid_py.inputs import InputWarning
from kgrid_py.ko import BatchResult, CallResult, KnowledgeObject, Provenance
from kgrid_py.metadata import KOMetadata
from kgrid_py.runtime import RuntimeSettings
from kgrid_py.shelf import InvalidReference, Reference, Shelf, ShelfEntry
from kgrid_py.units import UnitMismatch
from kgrid_py.vectors import TestVector, TestVectors

__version__ = "0.1.0"

__all__ = [
    "BatchResult",
    "CallResult",
    "CurationError",
    "FieldError",
    "InputError",
    "InputWarning",
    "IntegrityError",
    "InvalidKO",
    "InvalidReference",
    "KOMetadata",
    "KgridError",
    "KnowledgeObject",
    "NotFound",
    "Provenance",
    "Reference",
    "RetiredVersion",
    "RuntimeSettings",
    "Shelf",
    "ShelfEntry",
    "TestVector",
    "TestVectors",
    "UnitMismatch",
    "__version__",
    "load",
]


def load(
    ref: str | os.PathLike[str],
    shelf: str | os.PathLike[str] | None = None,
    *,
    verify_vectors: bool = False,
    allow_retired: bool = False,
    capture: Any = None,
    site: str | None = None,
    subject_secret: str | bytes | os.PathLike[str] | None = None,
    capture_policy: str = "group",
) -> KnowledgeObject:
    """Load a KO by reference (``kfre``, ``kfre@1``, ``kfre@^1.2``, ``kfre@1.0.0``) or by path.

    The shelf is ``shelf``, else ``$KGRID_SHELF``, else ``./knowledge_objects``. A shelf that is
    an ``http(s)://`` KGrid manifest URL is synced first (:func:`kgrid_py.curation.remote.sync`:
    download, verify, publish into a cache shelf) into ``$KGRID_CACHE``, else
    ``~/.cache/kgrid-py``, and loaded from there.

    Raises :class:`RetiredVersion` for a retired version unless ``allow_retired`` (a reference
    without an exact version never picks one); warns (``DeprecationWarning``) for a deprecated
    one, whose results then carry a warning naming its successor and sunset.

    ``capture`` (a path, ``sqlite:///...``, ``postgresql://...`` or an open
    :class:`~kgrid_py.learning.store.CaptureStore`) records every call in the capture store
    (:mod:`kgrid_py.learning.capture`; ``ko.recorder.close()`` flushes, as does exit) under
    ``site`` (else ``$KGRID_SITE``); ``subject_secret`` (a file path, else ``$KGRID_SUBJECT_SECRET``)
    keys ``ko.call(..., subject=...)``. ``capture_policy`` is ``"group"`` or ``"sync"``.
    """
    where = os.fspath(shelf) if shelf is not None else os.environ.get("KGRID_SHELF", _shelf.DEFAULT_SHELF)
    if _shelf.is_manifest_url(where):
        from kgrid_py.curation.remote import local_shelf  # only a remote shelf needs the publishing machinery

        where = local_shelf(where)
    ko = _shelf.load(ref, where, verify_vectors=verify_vectors, allow_retired=allow_retired, stacklevel=3)
    if capture is not None:
        from kgrid_py.learning import capture as learning  # only a capturing caller needs the store

        site = site or os.environ.get("KGRID_SITE")
        if not site:
            raise ValueError("capture needs a site: load(..., site='NAME') or $KGRID_SITE")
        ko.recorder = learning.Capture(
            capture, site=site, keyer=learning.keyer_for(subject_secret), capture_policy=capture_policy
        )
    return ko
