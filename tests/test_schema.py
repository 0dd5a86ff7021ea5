"""The published JSON Schema stays in sync with the pydantic models and checks real KOs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import REPO

from kgrid_py.schema import metadata_schema, schema_text


def test_committed_schema_matches_models() -> None:
    committed = (REPO / "schemas" / "ko-metadata.schema.json").read_text()
    assert committed == schema_text(), "regenerate with: python -m kgrid_py.schema > schemas/ko-metadata.schema.json"


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(metadata_schema())


def _bundled_metadata() -> list[Path]:
    return sorted((REPO / "knowledge_objects").rglob("metadata.json"))


@pytest.mark.parametrize("path", _bundled_metadata(), ids=lambda p: str(p.parent.relative_to(REPO)))
def test_bundled_kos_validate_with_plain_jsonschema(path: Path) -> None:
    schema = json.loads((REPO / "schemas" / "ko-metadata.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(json.loads(path.read_text()))


def test_demo_ko_validates_with_plain_jsonschema(demo_path: Path) -> None:
    schema = json.loads((REPO / "schemas" / "ko-metadata.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    raw = json.loads((demo_path / "metadata.json").read_text())
    validator.validate(raw)
    raw["functions"][0]["inputs"][0]["type"] = "float"
    assert not validator.is_valid(raw)
