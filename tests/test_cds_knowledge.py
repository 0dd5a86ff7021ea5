"""Name the knowledge used: titles, citations, version-less service ids and units as clinicians read them.

Everything is read from the KOs' metadata, so whatever titles and citations the curators write are
the ones checked.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fhir_data import creatinine, patient, searchset
from test_cds_hooks import _serve

from activator.routes.cds_hooks import CdsHooks, CdsSettings, display_unit, services_of
from kgrid_py.ko import KnowledgeObject

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"


@pytest.fixture(scope="module")
def ckd() -> list[KnowledgeObject]:
    return [KnowledgeObject.from_path(SHELF / "ckd-epi-egfr" / v) for v in ("1.0.0", "2.0.0")]


@pytest.fixture(scope="module")
def base(ckd: list[KnowledgeObject]) -> Iterator[str]:
    app = FastAPI()
    app.router.routes.extend(CdsHooks(lambda request: ckd, CdsSettings(no_auth=True)).routes)
    yield from _serve(app)


def _call(base: str, service: str) -> dict[str, Any]:
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        "prefetch": {
            "patient": patient(),
            "creatinine": searchset(creatinine(1.1, when=time.strftime("%Y-%m-%d"))),
        },
    }
    answer = httpx.post(f"{base}/cds-services/{service}", json=body)
    assert answer.status_code == 200, answer.text
    (card,) = answer.json()["cards"]
    return card


def test_discovery_tells_the_equations_apart(base: str, ckd: list[KnowledgeObject]) -> None:
    services = {s["id"]: s for s in httpx.get(f"{base}/cds-services").json()["services"]}
    old, new = services["ckd-epi-egfr-1.0.0-egfr-cr"], services["ckd-epi-egfr-2.0.0-egfr-cr"]
    assert old["title"] != new["title"] and old["description"] != new["description"]
    for service, ko in ((old, ckd[0]), (new, ckd[1])):
        assert ko.metadata.title in service["title"] and ko.ref in service["title"]
        assert ko.function("egfr-cr").title in service["description"]


def test_a_version_less_id_runs_the_highest_active_version(base: str, ckd: list[KnowledgeObject]) -> None:
    services = {s["id"]: s for s in httpx.get(f"{base}/cds-services").json()["services"]}
    assert {"ckd-epi-egfr-egfr-cr", "ckd-epi-egfr-1.0.0-egfr-cr", "ckd-epi-egfr-2.0.0-egfr-cr"} <= set(services)
    assert "ckd-epi-egfr@2.0.0" in services["ckd-epi-egfr-egfr-cr"]["title"]
    latest = _call(base, "ckd-epi-egfr-egfr-cr")
    pinned = _call(base, "ckd-epi-egfr-1.0.0-egfr-cr")
    assert latest["source"]["label"].endswith("(ckd-epi-egfr@2.0.0)")
    assert pinned["source"]["label"].endswith("(ckd-epi-egfr@1.0.0)")


def test_a_version_less_id_skips_versions_that_are_not_active(tmp_path: Path, ckd: list[KnowledgeObject]) -> None:
    shutil.copytree(SHELF / "ckd-epi-egfr" / "2.0.0", tmp_path / "2.0.0")
    metadata = tmp_path / "2.0.0" / "metadata.json"
    raw = json.loads(metadata.read_text())
    raw["status"] = "deprecated"  # lifecycle state is outside the sealed content
    metadata.write_text(json.dumps(raw))
    deprecated = KnowledgeObject.from_path(tmp_path / "2.0.0")
    services = services_of([ckd[0], deprecated])
    assert services["ckd-epi-egfr-egfr-cr"].ko.version == "1.0.0"
    assert services["ckd-epi-egfr-2.0.0-egfr-cr"].ko.version == "2.0.0"  # pinned ids stay


def test_the_card_cites_the_equation_run(base: str, ckd: list[KnowledgeObject]) -> None:
    for ko in ckd:
        card = _call(base, f"ckd-epi-egfr-{ko.version}-egfr-cr")
        cited = [c for c in ko.metadata.citations if c.role in ("refit", "development")]
        first = next((c for c in cited if c.role == "refit"), None) or cited[0]
        assert card["source"]["url"] == f"https://doi.org/{first.doi}"  # a refit's own paper before the original
        assert card["source"]["label"] == f"{ko.metadata.title} ({ko.ref})"
        for citation in cited:
            assert citation.text in card["detail"]
        assert f"knowledge object {ko.id}, version {ko.version}" in card["detail"]
        assert "mL/min/1.73 m²" in card["summary"] and "{1.73_m2}" not in card["summary"] + card["detail"]


@pytest.mark.parametrize(
    ("ucum", "shown"),
    [
        pytest.param("mL/min/{1.73_m2}", "mL/min/1.73 m²", id="egfr"),
        pytest.param("umol/L", "µmol/L", id="micromolar"),
        pytest.param("mg/dL", "mg/dL", id="mass"),
        pytest.param("1", "%", id="probability"),
        pytest.param("kg/m2", "kg/m²", id="bmi"),
        pytest.param("{cells}/uL", "cells/µL", id="fallback-annotation-and-micro"),
        pytest.param("mm[Hg]", "mm[Hg]", id="fallback-unchanged"),
        pytest.param(None, "", id="none"),
    ],
)
def test_units_are_shown_as_clinicians_write_them(ucum: str | None, shown: str) -> None:
    assert display_unit(ucum) == shown
