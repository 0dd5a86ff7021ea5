"""kgrid_py: computable knowledge objects — versioned ONNX models you load and call like functions.

import kgrid_py
ko = kgrid_py.load("kfre@1", shelf="knowledge_objects")
out = ko.call("four-variable", {"age": 63, "sex": "female", "egfr": 45, "uacr": 30})
"""

from kgrid_py.curator_errors import CurationError
from kgrid_py.errors import FieldError, InputError, IntegrityError, InvalidKO, KgridError, NotFound, RetiredVersion
from kgrid_py.inputs import InputWarning
from kgrid_py.ko import BatchResult, CallResult, KnowledgeObject, Provenance
from kgrid_py.metadata import KOMetadata
from kgrid_py.runtime import RuntimeSettings
from kgrid_py.shelf import InvalidReference, Reference, Shelf, ShelfEntry, load
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
