"""Issue 12: a hostile unit string must be refused at once on every path, never parsed slowly.

The old parser split with a look-ahead regex that rescanned the rest of the text at every ``/``:
``"g/" * 100000`` held the GIL for seconds. Every path (one call, a batch's ``units=``, a unit per
row, FHIR quantities and HTTP) now refuses a unit over ``MAX_UNIT_LENGTH`` characters before
reading it, and a unit at the limit parses in linear time.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from activator_server import Server
from fhir_data import NOW, egfr, patient, searchset, uacr

from kgrid_py.errors import InputError
from kgrid_py.fhir import FhirData, map_inputs
from kgrid_py.ko import KnowledgeObject
from kgrid_py.units import MAX_UNIT_LENGTH, UnitTooLong, conversion_factor, parse_unit

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
PATIENT = {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}
HOSTILE = "g/" * 100_000  # 200 KB
FAST_S = 0.05


@pytest.fixture(scope="module")
def kfre() -> KnowledgeObject:
    return KnowledgeObject.from_path(SHELF / "kfre" / "1.0.0")


def _timed(action: Callable[[], Any]) -> tuple[float, Any, Exception | None]:
    """(seconds, result, exception) of ``action()``."""
    start = time.perf_counter()
    try:
        result = action()
    except Exception as exc:
        return time.perf_counter() - start, None, exc
    return time.perf_counter() - start, result, None


def test_parse_unit_refuses_a_long_unit_at_once() -> None:
    elapsed, _, exc = _timed(lambda: parse_unit(HOSTILE))
    assert isinstance(exc, UnitTooLong)
    assert str(exc) == f"unit is 200000 characters long; a UCUM unit has at most {MAX_UNIT_LENGTH}"
    assert elapsed < FAST_S


@pytest.mark.parametrize(
    "text",
    [
        "g/" * (MAX_UNIT_LENGTH // 2),  # ends in '/': invalid, but read in one pass
        "g/" * (MAX_UNIT_LENGTH // 2 - 1) + "g",
        "{" + "/" * (MAX_UNIT_LENGTH - 2) + "}",  # separators inside an annotation
        "g." * (MAX_UNIT_LENGTH // 2 - 1) + "g",
    ],
    ids=["trailing-slash", "many-divisions", "annotation-of-slashes", "many-products"],
)
def test_units_at_the_limit_parse_fast(text: str) -> None:
    assert len(text) <= MAX_UNIT_LENGTH
    elapsed, _, _ = _timed(lambda: parse_unit(text))
    assert elapsed < 0.005


def test_annotation_separators_are_not_operators() -> None:
    assert dict(parse_unit("mL/min/{1.73_m2}").dimension) == {"L": 3, "/T": 1, "/{1.73_m2}": 1}
    assert dict(parse_unit("{a/b.c}").dimension) == {"{a/b.c}": 1}


def test_conversion_refuses_long_units_on_either_side() -> None:
    with pytest.raises(UnitTooLong):
        conversion_factor(HOSTILE, "mg/g")
    with pytest.raises(UnitTooLong):
        conversion_factor("mg/g", HOSTILE)


def test_call_names_the_field_and_is_fast(kfre: KnowledgeObject) -> None:
    elapsed, _, exc = _timed(lambda: kfre.call("four-variable", {**PATIENT, "uacr": {"value": 3, "unit": HOSTILE}}))
    assert isinstance(exc, InputError)
    assert [(e.field, e.message) for e in exc.errors] == [
        ("uacr", f"unit is 200000 characters long; a UCUM unit has at most {MAX_UNIT_LENGTH}")
    ]
    assert elapsed < FAST_S


def test_batch_units_argument_is_refused_fast(kfre: KnowledgeObject) -> None:
    table = {name: [value] * 3 for name, value in PATIENT.items()}
    elapsed, _, exc = _timed(lambda: kfre.call_batch("four-variable", table, units={"uacr": HOSTILE}))
    assert isinstance(exc, InputError)
    assert [e.field for e in exc.errors] == ["uacr"]
    assert elapsed < FAST_S


def test_batch_unit_per_row_is_a_row_error_and_fast(kfre: KnowledgeObject) -> None:
    table = {name: [value] * 3 for name, value in PATIENT.items()}
    table["uacr"] = [30, {"value": 3, "unit": HOSTILE}, {"value": 3.4, "unit": "mg/mmol"}]
    elapsed, result, exc = _timed(lambda: kfre.call_batch("four-variable", table))
    assert exc is None
    assert result.errors[0] is None and result.errors[2] is None
    assert result.errors[1] == f"uacr: unit is 200000 characters long; a UCUM unit has at most {MAX_UNIT_LENGTH}"
    assert elapsed < FAST_S


def test_error_messages_never_echo_a_long_unit(kfre: KnowledgeObject) -> None:
    """A unit under the limit that does not convert is quoted, but cut to 40 characters."""
    unit = "g/" * 31 + "g"
    with pytest.raises(InputError) as caught:
        kfre.call("four-variable", {**PATIENT, "uacr": {"value": 3, "unit": unit}})
    assert unit not in caught.value.errors[0].message
    assert "..." in caught.value.errors[0].message


def test_fhir_quantity_with_a_long_unit_is_refused_fast(kfre: KnowledgeObject) -> None:
    resources = [patient(), searchset(egfr(30), uacr(300, unit=HOSTILE))]
    data = FhirData.from_resources(resources)
    elapsed, mapping, exc = _timed(
        lambda: map_inputs(kfre.function("four-variable"), data, datetime.fromisoformat(NOW))
    )
    assert exc is None
    assert "uacr" not in mapping.inputs
    assert [gap.input for gap in mapping.gaps] == ["uacr"]
    assert elapsed < FAST_S


def test_distinct_units_do_not_grow_the_cache_without_bound(kfre: KnowledgeObject) -> None:
    plan = kfre._function("four-variable").plan.by_name["uacr"]
    for n in range(200):
        spelling = "mg/g" + "".join(".1" if bit == "1" else "/1" for bit in f"{n:b}")  # mg/g.1/1.1 ...
        assert plan.factor_for(spelling) == 1.0
    assert len(plan._factors) <= 64


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("units-dos")
    shelf = root / "shelf"
    shutil.copytree(SHELF / "kfre" / "1.0.0", shelf / "kfre" / "1.0.0")
    with Server(shelf, "--no-watch", log=root / "server.log") as running:
        yield running


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({**PATIENT, "uacr": {"value": 30, "unit": HOSTILE}}, 422),
        ([{**PATIENT, "uacr": {"value": 30, "unit": HOSTILE}}] * 2, 200),  # a batch: an error per row
    ],
    ids=["call", "batch"],
)
def test_server_refuses_a_long_unit_and_health_stays_up(server: Server, body: object, status: int) -> None:
    """Against a real server: refused naming the field, fast, while /health keeps answering."""
    health: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                start = time.perf_counter()
                client.get(server.url + "/health", timeout=5)
                health.append(time.perf_counter() - start)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        start = time.perf_counter()
        response = httpx.post(server.url + "/kfre/1.0.0/four-variable", json=body, timeout=10)
        elapsed = time.perf_counter() - start
    finally:
        stop.set()
        poller.join()
    assert response.status_code == status
    assert HOSTILE[:1000] not in response.text
    assert "a UCUM unit has at most 64" in response.text
    assert "uacr" in response.text
    assert elapsed < 1.0  # the 200 KB body's transfer and JSON parse; parsing the unit was ~7 s
    assert max(health, default=0.0) < 1.0
