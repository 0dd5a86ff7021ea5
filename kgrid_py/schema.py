"""The published JSON Schema of ``metadata.json``, and validation of raw metadata against it.

The schema is generated from :class:`kgrid_py.metadata.KOMetadata`; the committed copy in
``schemas/ko-metadata.schema.json`` is what non-Python tools use, and a test keeps it in sync.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jsonschema

from kgrid_py.errors import InvalidKO
from kgrid_py.metadata import KOMetadata

__all__ = ["SCHEMA_ID", "metadata_schema", "schema_text", "validate_raw_metadata"]

SCHEMA_ID = "https://kgrid-py.org/schemas/ko-metadata.schema.json"


@lru_cache(maxsize=1)
def metadata_schema() -> dict[str, Any]:
    schema = KOMetadata.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def schema_text() -> str:
    """The schema exactly as committed to ``schemas/ko-metadata.schema.json``."""
    return json.dumps(metadata_schema(), indent=2, sort_keys=True) + "\n"


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = metadata_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_raw_metadata(raw: Any, source: str = "metadata.json") -> None:
    """Raise :class:`InvalidKO` listing every place where ``raw`` breaks the schema."""
    errors = sorted(_validator().iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:10]]
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise InvalidKO(f"{source} does not match the KO metadata schema: {'; '.join(lines)}{more}")


if __name__ == "__main__":  # python -m kgrid_py.schema > schemas/ko-metadata.schema.json
    print(schema_text(), end="")
