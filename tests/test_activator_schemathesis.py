"""Generated requests against the served combined OpenAPI: no 5xx, no response outside its schema."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import schemathesis
from activator_server import Server, build_shelf
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz")
    shelf, _ = build_shelf(root)
    with Server(shelf, "--no-watch", "--no-access-log", log=root / "server.log") as running:
        yield running


def test_generated_requests_get_no_5xx_and_conform(server: Server) -> None:
    # Driven by hand (not schemathesis' pytest plugin, which does not load under pytest 9): one
    # bounded hypothesis run per operation of the combined OpenAPI the server publishes.
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for operation, mode in itertools.product(operations, GenerationMode):
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing to break in a GET without a body (path parameters are free strings)

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(base_url=server.url, checks=CHECKS)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label} ({mode}): {str(exc)[:2000]}")
    assert failures == []
    assert sum(statuses.values()) >= 100
    assert {200, 400, 404, 422} <= set(statuses), statuses  # generated calls reached the KOs, valid and not
    print(f"schemathesis: {sum(statuses.values())} requests, statuses {sorted(statuses.items())}")


def test_the_fuzzed_server_logged_no_error(server: Server) -> None:
    log = server.read_log()
    assert "Traceback" not in log and " ERROR " not in log
