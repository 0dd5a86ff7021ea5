"""Property-based fuzzing of every route family of a real ``kgrid serve`` (Hypothesis).

Generated requests for KGrid 1.x, KGrid 2.0, the Open Inference Protocol, ``/kos`` and
``/cds-services`` (``--cds-no-auth``), built from custom strategies for what broke the activator
before: unit strings (long, repeated, micro signs), lone surrogates, odd batch shapes, unhashable
values. The properties: never a 5xx, every error is ``application/problem+json``, and the server
logs no traceback. Bounded: a fixed number of examples per family, well under a minute in all
(``KGRID_FUZZ_EXAMPLES`` raises it; ``KGRID_FUZZ_SEED`` explores other examples).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from activator_server import Server, build_shelf
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("KGRID_FUZZ_EXAMPLES", "60"))
SEED = int(os.environ.get("KGRID_FUZZ_SEED", "0"))
FIELDS = ["weight", "height", "sex", "smoker", "age"]

# -- strategies ----------------------------------------------------------------------------------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
hostile_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=surrogates, min_size=1, max_size=3),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=5), surrogates, st.text(max_size=5)),
    st.sampled_from(["", "\x00", "\n", "%0a", "../../etc/passwd", "NaN", "1e400", "😀"]),
)
units = st.one_of(
    st.sampled_from(["kg", "[lb_av]", "g", "m", "cm", "µmol/L", "umol/L", "mg/dL", "a", "mo", "1", "%", "{x}"]),
    st.integers(1, 2000).map(lambda n: "g/" * n),  # once quadratic to parse
    st.integers(1, 500).map(lambda n: "(" * n + "g" + ")" * n),
    hostile_text,
)
numbers = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e308, 5e-324, 70, 1.75, 40]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, hostile_text)
values = st.one_of(
    scalars,
    st.fixed_dictionaries({"value": numbers, "unit": units}),
    st.fixed_dictionaries({"value": scalars}, optional={"unit": st.one_of(units, st.lists(units, max_size=2))}),
    st.lists(scalars, max_size=3),
    st.dictionaries(hostile_text, scalars, max_size=3),
)
field_names = st.one_of(st.sampled_from(FIELDS), hostile_text)
call_inputs = st.one_of(
    st.fixed_dictionaries(
        {"weight": st.one_of(numbers, values), "height": values, "sex": values, "age": values},
        optional={"smoker": values},
    ),
    st.dictionaries(field_names, values, max_size=8),
)
batches = st.one_of(
    call_inputs,
    st.lists(call_inputs, max_size=55),  # around the server's --max-batch-rows 50
    st.lists(st.lists(call_inputs, max_size=2), max_size=3),
    scalars,
)
ko_ids = st.one_of(st.sampled_from(["demo-bmi", "broken-ko", "kos", "metrics", "v2", "endpoints"]), hostile_text)
versions = st.one_of(
    st.sampled_from(["1.0.0", "1", "1.1", "0.9.0", "0.5.0", "1.2.0", "1.3.0", "1.4.0", "^1", "~0.9", ">=1 <2", "9"]),
    hostile_text,
)
endpoints = st.one_of(st.just("bmi"), hostile_text)
datatypes = st.one_of(
    st.sampled_from(["FP64", "FP32", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "FP16"]),
    st.lists(st.text(max_size=4), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    st.integers(),
    st.none(),
)
shapes = st.one_of(
    st.lists(st.integers(0, 60), min_size=1, max_size=3),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=2), st.none()), max_size=3),
    st.sampled_from([[1], [2], [51], [1, 1], []]),
)
tensors = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(FIELDS), hostile_text, st.lists(st.text(max_size=3), max_size=2))},
    optional={
        "datatype": datatypes,
        "shape": shapes,
        "data": st.one_of(st.lists(scalars, max_size=6), st.lists(st.lists(numbers, max_size=3), max_size=3), scalars),
        "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.integers(-5, 50)}), scalars),
    },
)
oip_requests = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensors, max_size=6), scalars)},
    optional={
        "id": st.one_of(hostile_text, st.integers()),
        "outputs": st.one_of(
            st.lists(st.fixed_dictionaries({"name": st.one_of(hostile_text, st.lists(st.text()))})), scalars
        ),
        "parameters": st.one_of(st.dictionaries(hostile_text, scalars, max_size=2), scalars),
    },
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "application/zip", "application/x-gzip", ""]
)


def _encode(value: Any) -> bytes:
    # ensure_ascii writes a lone surrogate as its \\uXXXX escape: valid JSON syntax, as a client would send.
    return json.dumps(value, ensure_ascii=True).encode()


def _segment(text: str) -> str:
    # Percent-encoded bytes, as a client sends them; a lone surrogate becomes invalid UTF-8 on the wire.
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


# -- the server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz-routes")
    shelf, _ = build_shelf(root)
    args = ["--no-watch", "--no-access-log", "--cds-no-auth", "--max-batch-rows", "50"]
    with Server(shelf, *args, log=root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _check(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400 and response.request.method != "HEAD":
        media = response.headers.get("content-type", "")
        assert media.startswith("application/problem+json"), f"{what}: {response.status_code} as {media!r}"
        assert response.json()["status"] == response.status_code


def _fuzz(**strategies: Any) -> Any:
    """``given`` plus the bounded, reproducible settings every family shares."""

    def decorate(test: Any) -> Any:
        bounded = settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=SEED == 0,
        )
        wrapped = bounded(given(**strategies)(test))
        return seed(SEED)(wrapped) if SEED else wrapped

    return decorate


# -- one property per route family ----------------------------------------------------------------------


def test_kgrid_v1_calls(client: httpx.Client) -> None:
    @_fuzz(ko_id=ko_ids, version=versions, endpoint=endpoints, body=batches, media=content_types)
    def run(ko_id: str, version: str, endpoint: str, body: Any, media: str) -> None:
        path = f"/{_segment(ko_id)}/{_segment(version)}/{_segment(endpoint)}"
        response = client.post(path, content=_encode(body), headers={"Content-Type": media})
        _check(response, f"POST {path}")

    run()


def test_kgrid_v2_calls(client: httpx.Client) -> None:
    minimal = st.sampled_from([None, 'application/json;profile="minimal"', "application/json"])

    @_fuzz(ko_id=ko_ids, endpoint=endpoints, body=batches, pins=st.lists(versions, max_size=2), accept=minimal)
    def run(ko_id: str, endpoint: str, body: Any, pins: list[str], accept: str | None) -> None:
        path = f"/endpoints/{_segment(ko_id)}/{_segment(endpoint)}"
        headers = {"Content-Type": "application/json", **({"Accept": accept} if accept else {})}
        query = "&".join(f"v={_segment(p)}" for p in pins)
        response = client.post(f"{path}?{query}" if query else path, content=_encode(body), headers=headers)
        _check(response, f"POST {path}")
        if response.status_code == 200 and accept and "minimal" in accept and isinstance(body, list):
            assert None not in response.json()  # a bad row is a problem object, never a bare null

    run()


def test_open_inference_protocol(client: httpx.Client) -> None:
    models = st.one_of(st.just("demo-bmi.bmi"), st.builds(lambda a, b: f"{a}.{b}", ko_ids, endpoints), hostile_text)

    @_fuzz(model=models, version=st.one_of(st.none(), versions), body=oip_requests, binary=st.binary(max_size=40))
    def run(model: str, version: str | None, body: Any, binary: bytes) -> None:
        path = f"/v2/models/{_segment(model)}" + (f"/versions/{_segment(version)}" if version else "")
        head = _encode(body)
        headers = {"Content-Type": "application/json"}
        if binary:
            headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
        _check(client.post(path + "/infer", content=head + binary, headers=headers), f"POST {path}/infer")
        _check(client.get(path), f"GET {path}")
        _check(client.get(path + "/ready"), f"GET {path}/ready")

    run()


def test_kos_routes(client: httpx.Client) -> None:
    methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND", "X-Y"])

    @_fuzz(
        method=methods,
        ko_id=ko_ids,
        version=versions,
        tail=st.sampled_from(["", "/service", "/status"]),
        body=st.one_of(st.binary(max_size=64), st.builds(_encode, call_inputs)),
        media=content_types,
    )
    def run(method: str, ko_id: str, version: str, tail: str, body: bytes, media: str) -> None:
        for path in ("/kos", f"/kos/{_segment(ko_id)}", f"/kos/{_segment(ko_id)}/{_segment(version)}{tail}"):
            _check(client.request(method, path, content=body, headers={"Content-Type": media}), f"{method} {path}")

    run()


def test_cds_hooks(client: httpx.Client) -> None:
    hooks = st.fixed_dictionaries(
        {},
        optional={
            "hook": st.one_of(st.sampled_from(["patient-view", "order-select"]), hostile_text),
            "hookInstance": hostile_text,
            "context": st.one_of(st.dictionaries(hostile_text, scalars, max_size=3), scalars),
            "prefetch": st.one_of(st.dictionaries(hostile_text, values, max_size=3), scalars),
            "fhirServer": st.sampled_from(["http://127.0.0.1:9/fhir", "", "file:///etc/passwd"]),
        },
    )
    services = st.one_of(st.sampled_from(["demo-bmi-bmi", "kfre-four-variable"]), hostile_text)

    @_fuzz(service=services, body=st.one_of(hooks, batches), media=content_types)
    def run(service: str, body: Any, media: str) -> None:
        _check(client.get("/cds-services"), "GET /cds-services")
        path = f"/cds-services/{_segment(service)}"
        _check(client.post(path, content=_encode(body), headers={"Content-Type": media}), f"POST {path}")
        _check(client.post(path + "/feedback", content=_encode(body), headers={"Content-Type": media}), "feedback")

    run()


def test_the_fuzzed_server_stayed_up_and_logged_no_traceback(server: Server, client: httpx.Client) -> None:
    started = time.perf_counter()
    assert client.get("/health").status_code == 200
    assert time.perf_counter() - started < 1.0
    log = server.read_log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
