"""CDS Hooks 2.0 against a real uvicorn server, a real loopback FHIR server and real JWTs.

No maintained CDS Hooks client installs from the registries we use, so the client here is httpx
speaking the wire format of cds-hooks.hl7.org/2.0 (discovery, service call, feedback).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from fhir_data import PLCO_DIRECT, creatinine, egfr, patient, plco_resources, quantity_obs, searchset, uacr

from activator.cds_auth import JwtVerifier, TrustedIssuer
from activator.cds_store import CdsStore
from activator.routes.cds_hooks import CdsHooks, CdsSettings
from kgrid_py.ko import KnowledgeObject

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
ISSUER = "https://ehr.example.org"
KFRE = "kfre-1.0.0-four-variable"
EGFR = "ckd-epi-egfr-2.0.0-egfr-cr"


# -- keys and tokens ---------------------------------------------------------------------------

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def _jwks() -> dict[str, Any]:
    ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True) | {"kid": "ec1", "use": "sig"}
    rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True) | {"kid": "rsa1", "use": "sig"}
    return {"keys": [ec_jwk, rsa_jwk]}


def token(aud: str, *, alg: str = "ES256", key: Any = None, kid: str = "ec1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "ehr-client", "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    if key is None:
        key = {"ES256": EC_KEY, "ES384": EC_KEY, "RS256": RSA_KEY, "RS384": RSA_KEY}[alg]
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


# -- servers -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def kos() -> list[KnowledgeObject]:
    return [
        KnowledgeObject.from_path(SHELF / "kfre" / "1.0.0"),
        KnowledgeObject.from_path(SHELF / "ckd-epi-egfr" / "2.0.0"),
    ]


def _serve(app: Any, port: int | None = None) -> Iterator[str]:
    port = port or _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cds") / "cds.sqlite3"


@pytest.fixture(scope="module")
def port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def hooks(kos: list[KnowledgeObject], store_path: Path, port: int, fhir_server: tuple[str, _FhirStore]) -> CdsHooks:
    verifier = JwtVerifier([TrustedIssuer(ISSUER, jwks=_jwks(), fhir_servers=(fhir_server[0],))])
    settings = CdsSettings(verifier=verifier, store_path=store_path, public_url=f"http://127.0.0.1:{port}")
    return CdsHooks(lambda request: kos, settings)


@pytest.fixture(scope="module")
def base(hooks: CdsHooks, port: int) -> Iterator[str]:
    app = FastAPI()
    app.router.routes.extend(hooks.routes)
    yield from _serve(app, port)


@pytest.fixture(scope="module")
def open_base(kos: list[KnowledgeObject]) -> Iterator[str]:
    app = FastAPI()
    app.router.routes.extend(CdsHooks(lambda request: kos, CdsSettings(no_auth=True)).routes)
    yield from _serve(app)


class _FhirStore:
    """A tiny FHIR server: Patient read and Observation search by code; records what it was asked."""

    def __init__(self) -> None:
        self.resources: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str | None]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                store.requests.append((self.path, self.headers.get("Authorization")))
                url = urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                kind = parts[1] if len(parts) > 1 else ""
                if len(parts) == 3:
                    found = [r for r in store.resources if r["resourceType"] == kind and r.get("id") == parts[2]]
                    return self._send(200, found[0]) if found else self._send(404, {"resourceType": "OperationOutcome"})
                query = parse_qs(url.query)
                codes = set(",".join(query.get("code", [""])).split(","))
                hits = [
                    r
                    for r in store.resources
                    if r["resourceType"] == kind
                    and any(f"{c['system']}|{c['code']}" in codes for c in r["code"]["coding"])
                ]
                return self._send(200, searchset(*hits, kind=kind))

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[tuple[str, _FhirStore]]:
    store = _FhirStore()
    server = ThreadingHTTPServer(("127.0.0.1", 0), store.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir", store
    server.shutdown()
    server.server_close()


# -- helpers -----------------------------------------------------------------------------------


def call_body(prefetch: dict[str, Any] | None = None, hook: str = "patient-view", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/123", "patientId": "p1"},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    body.update(extra)
    return body


def kfre_prefetch(**override: Any) -> dict[str, Any]:
    prefetch = {
        "patient": patient(),
        "egfr": searchset(egfr(30, when=_days_ago(20))),
        "uacr": searchset(uacr(50, "mg/mmol", when=_days_ago(30))),
    }
    prefetch.update(override)
    return prefetch


def _days_ago(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() - days * 86400))


def post(base: str, service: str, body: Any, *, auth: str | None = "valid", path: str = "") -> httpx.Response:
    url = f"{base}/cds-services/{service}{path}"
    headers = {}
    if auth == "valid":
        headers["Authorization"] = f"Bearer {token(url)}"
    elif auth is not None:
        headers["Authorization"] = auth
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers=headers | {"Content-Type": "application/json"})
    return httpx.post(url, json=body, headers=headers)


# -- discovery and cards -----------------------------------------------------------------------


def test_discovery_lists_bound_functions_with_prefetch(base: str) -> None:
    services = {s["id"]: s for s in httpx.get(f"{base}/cds-services").json()["services"]}
    assert {KFRE, EGFR, f"{KFRE}-order-select"} <= set(services)
    kfre = services[KFRE]
    assert kfre["hook"] == "patient-view"
    assert kfre["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert kfre["prefetch"]["egfr"].startswith(
        "Observation?patient={{context.patientId}}&code=http://loinc.org|62238-1"
    )
    assert services[f"{KFRE}-order-select"]["hook"] == "order-select"


def test_patient_view_card_with_result_inputs_and_source(base: str) -> None:
    answer = post(base, KFRE, call_body(kfre_prefetch()))
    assert answer.status_code == 200, answer.text
    (card,) = answer.json()["cards"]
    uuid.UUID(card["uuid"])
    assert len(card["summary"]) < 140
    assert card["summary"].startswith("Kidney failure risk (4-variable KFRE): risk_2y ")
    assert card["indicator"] == "critical"
    assert f"| uacr | 50 | mg/mmol | {_days_ago(30)} | Observation/uacr1 |" in card["detail"]
    assert f"| egfr | 30 | mL/min/1.73 m² | {_days_ago(20)} | Observation/egfr1 |" in card["detail"]
    kfre = KnowledgeObject.from_path(SHELF / "kfre" / "1.0.0").metadata
    assert card["source"]["label"] == f"{kfre.title} (kfre@1.0.0)"
    development = next(c for c in kfre.citations if c.role == "development")
    assert card["source"]["url"] == f"https://doi.org/{development.doi}"
    assert "Tangri N" in card["detail"]
    # An input the record cannot give is not hidden: the calibration used is said to be assumed.
    assert (
        "| region | north_american |  | | **assumed**: the KO's default, not read from the record |" in card["detail"]
    )


def test_low_risk_is_info_and_middle_risk_is_warning(base: str) -> None:
    low = post(base, KFRE, call_body(kfre_prefetch(egfr=searchset(egfr(55)), uacr=searchset(uacr(10)))))
    assert low.json()["cards"][0]["indicator"] == "info"
    mid = post(base, KFRE, call_body(kfre_prefetch(egfr=searchset(egfr(40)), uacr=searchset(uacr(100)))))
    card = mid.json()["cards"][0]
    assert card["indicator"] == "warning", card["summary"]


def test_missing_and_stale_inputs_give_a_card_that_names_them(base: str) -> None:
    prefetch = kfre_prefetch(uacr=searchset(), egfr=searchset(egfr(30, when="2020-01-01")))
    (card,) = post(base, KFRE, call_body(prefetch)).json()["cards"]
    assert card["summary"] == "Kidney failure risk (4-variable KFRE): cannot compute, missing egfr, uacr"
    assert (
        "- **egfr** (stale): the most recent (Observation/egfr1, 2020-01-01) is older than 365 days" in card["detail"]
    )
    assert "- **uacr** (missing): no final Observation with code 9318-7, 14959-1, 32294-1" in card["detail"]


def test_unknown_gender_cannot_compute(base: str) -> None:
    prefetch = {"patient": patient(gender="unknown"), "creatinine": searchset(creatinine(1.1, when=_days_ago(3)))}
    (card,) = post(base, EGFR, call_body(prefetch)).json()["cards"]
    assert "cannot compute, missing sex" in card["summary"]
    assert "Patient.gender is 'unknown'" in card["detail"]


def test_value_outside_hard_bounds_is_a_card_not_an_error(base: str) -> None:
    prefetch = kfre_prefetch(patient=patient(birth=_days_ago(365 * 10)))
    answer = post(base, KFRE, call_body(prefetch))
    assert answer.status_code == 200
    card = answer.json()["cards"][0]
    assert card["summary"].endswith("cannot compute, unusable age")
    assert card["indicator"] == "warning"


# -- fetching what the prefetch lacks ----------------------------------------------------------


def test_missing_prefetch_is_fetched_from_the_fhir_server(base: str, fhir_server: tuple[str, _FhirStore]) -> None:
    url, store = fhir_server
    store.resources[:] = [patient(), creatinine(88.4, "umol/L", when=_days_ago(5), code="38483-4")]
    store.requests.clear()
    body = call_body(fhirServer=url, fhirAuthorization={"access_token": "secret-fhir-token", "token_type": "Bearer"})
    answer = post(base, EGFR, body)
    assert answer.status_code == 200, answer.text
    (card,) = answer.json()["cards"]
    title = KnowledgeObject.from_path(SHELF / "ckd-epi-egfr" / "2.0.0").function("egfr-cr").cds.title
    assert card["summary"].startswith(f"{title}: egfr ")
    assert "| creatinine | 88.4 | µmol/L |" in card["detail"]
    paths = sorted(p for p, _ in store.requests)
    assert paths[0].startswith("/fhir/Observation?patient=p1&code=http://loinc.org|2160-0")
    assert "&_sort=-date&_count=" in paths[0]  # newest first, a bounded page
    assert paths[1] == "/fhir/Patient/p1"
    assert {a for _, a in store.requests} == {"Bearer secret-fhir-token"}


def test_partial_prefetch_fetches_only_the_rest(base: str, fhir_server: tuple[str, _FhirStore]) -> None:
    url, store = fhir_server
    store.resources[:] = [patient(), creatinine(1.0, when=_days_ago(5))]
    store.requests.clear()
    answer = post(base, EGFR, call_body({"patient": patient(), "creatinine": None}, fhirServer=url))
    assert answer.status_code == 200
    assert [p.split("?")[0] for p, _ in store.requests] == ["/fhir/Observation"]


def test_missing_prefetch_without_fhir_server_is_412(base: str) -> None:
    answer = post(base, EGFR, call_body({"patient": patient()}))
    assert answer.status_code == 412
    assert answer.json()["detail"] == "prefetch creatinine missing and no fhirServer to fetch it from"


def test_fhir_server_without_the_patient_is_412(base: str, fhir_server: tuple[str, _FhirStore]) -> None:
    url, store = fhir_server
    store.resources[:] = []
    answer = post(base, EGFR, call_body(fhirServer=url))
    assert answer.status_code == 412
    # Said without echoing the remote status or URL (they can reveal internal systems).
    assert answer.json()["detail"] == "could not fetch patient from the FHIR server"


def test_fhir_server_off_the_allow_list_is_412(base: str) -> None:
    answer = post(base, EGFR, call_body(fhirServer=f"http://127.0.0.1:{_free_port()}/fhir"))
    assert answer.status_code == 412
    assert "not allowed" in answer.json()["detail"]  # another port is another server


# -- bad requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        pytest.param(b"{not json", 400, "malformed JSON", id="not-json"),
        pytest.param([1], 400, "the request body must be a JSON object", id="not-object"),
        pytest.param(call_body({}, hook="order-select"), 400, "'hook' must be 'patient-view'", id="wrong-hook"),
        pytest.param({"hook": "patient-view", "hookInstance": "x"}, 400, "'context.patientId'", id="no-context"),
        pytest.param(
            call_body({"patient": {"resourceType": "Patient", "gender": 7}, "creatinine": searchset()}),
            400,
            "unusable FHIR data: invalid FHIR R4 Patient: gender",
            id="malformed-fhir",
        ),
        pytest.param(
            call_body({"patient": patient(), "creatinine": {"resourceType": "Bundle", "type": "transaction"}}),
            400,
            "a Bundle of type 'transaction' cannot carry patient data",
            id="bundle-type",
        ),
        pytest.param(
            call_body({"patient": patient(pid="p2"), "creatinine": searchset()}),
            400,
            "the prefetched Patient is not context.patientId",
            id="other-patient",
        ),
        pytest.param(call_body({}, fhirServer="ftp://x"), 400, "'fhirServer' must be an http(s) URL", id="bad-server"),
    ],
)
def test_bad_requests_are_4xx(base: str, body: Any, status: int, message: str) -> None:
    answer = post(base, EGFR, body)
    assert answer.status_code == status
    assert message in answer.json()["detail"]


def test_order_select_needs_draft_orders(base: str) -> None:
    answer = post(base, f"{EGFR}-order-select", call_body({}, hook="order-select"))
    assert answer.status_code == 400
    assert "draftOrders" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        pytest.param(creatinine(1.0, "furlongs", when=_days_ago(2)), "cannot be converted", id="unknown-unit"),
        pytest.param(
            {**quantity_obs("cr1", "2160-0", 1, "mg/dL", _days_ago(2)), "valueQuantity": None, "valueString": "high"},
            "has no numeric valueQuantity (it has valueString)",
            id="non-numeric",
        ),
    ],
)
def test_unusable_values_give_a_clear_card(base: str, obs: dict[str, Any], expected: str) -> None:
    obs = {k: v for k, v in obs.items() if v is not None}
    (card,) = post(base, EGFR, call_body({"patient": patient(), "creatinine": searchset(obs)})).json()["cards"]
    assert "cannot compute, missing creatinine" in card["summary"]
    assert expected in card["detail"]


def test_unknown_service_is_404(base: str) -> None:
    assert post(base, "nope-1.0.0-x", call_body({})).status_code == 404


# -- JWT ---------------------------------------------------------------------------------------


def _with(base: str, service: str, **kw: Any) -> httpx.Response:
    url = f"{base}/cds-services/{service}"
    kw.setdefault("aud", url)
    return post(base, service, call_body(kfre_prefetch()), auth=f"Bearer {token(**kw)}")


@pytest.mark.parametrize("alg", ["ES256", "RS256", "RS384"])
def test_valid_asymmetric_tokens_are_accepted(base: str, alg: str) -> None:
    kid = "ec1" if alg.startswith("ES") else "rsa1"
    assert _with(base, KFRE, alg=alg, kid=kid).status_code == 200


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        pytest.param({"exp": int(time.time()) - 120, "iat": int(time.time()) - 400}, "expired", id="expired"),
        pytest.param({"aud": "https://elsewhere.example/cds-services/x"}, "'aud'", id="wrong-aud"),
        pytest.param({"iss": "https://evil.example"}, "issuer 'https://evil.example' is not trusted", id="issuer"),
        pytest.param(
            {"alg": "HS256", "key": "a-shared-secret-of-32-bytes-long!"}, "'HS256' is not accepted", id="hs256"
        ),
        pytest.param({"key": OTHER_KEY}, "signature does not verify", id="forged"),
        pytest.param({"jti": None}, "lacks the 'jti' claim", id="no-jti"),
        pytest.param({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 3900}, "'iat'", id="future-iat"),
        pytest.param({"kid": "unknown"}, "has no key 'unknown'", id="unknown-kid"),
    ],
)
def test_bad_tokens_are_401(base: str, kw: dict[str, Any], message: str) -> None:
    answer = _with(base, KFRE, **kw)
    assert answer.status_code == 401
    assert message in answer.json()["detail"]


def test_alg_none_is_401(base: str) -> None:
    url = f"{base}/cds-services/{KFRE}"
    now = int(time.time())
    unsigned = jwt.encode({"iss": ISSUER, "aud": url, "iat": now, "exp": now + 60, "jti": "n"}, None, algorithm="none")
    answer = post(base, KFRE, call_body(kfre_prefetch()), auth=f"Bearer {unsigned}")
    assert answer.status_code == 401
    assert "'none' is not accepted" in answer.json()["detail"]


def test_replayed_jti_is_401(base: str) -> None:
    url = f"{base}/cds-services/{KFRE}"
    same = token(url, jti="once-only")
    assert post(base, KFRE, call_body(kfre_prefetch()), auth=f"Bearer {same}").status_code == 200
    again = post(base, KFRE, call_body(kfre_prefetch()), auth=f"Bearer {same}")
    assert again.status_code == 401
    assert "replay" in again.json()["detail"]


@pytest.mark.parametrize("auth", [None, "Basic abc", "Bearer not-a-jwt"])
def test_missing_or_malformed_authorization_is_401(base: str, auth: str | None) -> None:
    assert post(base, KFRE, call_body(kfre_prefetch()), auth=auth).status_code == 401


def test_no_auth_mode_needs_no_token(open_base: str, caplog: pytest.LogCaptureFixture) -> None:
    assert post(open_base, KFRE, call_body(kfre_prefetch()), auth=None).status_code == 200


def test_no_auth_logs_a_warning(kos: list[KnowledgeObject], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="activator.cds"):
        CdsHooks(lambda request: kos, CdsSettings(no_auth=True))
    assert "verification is OFF" in caplog.text


def test_issuer_config_file(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text(json.dumps(_jwks()))
    config = tmp_path / "cds-issuers.json"
    config.write_text(json.dumps({"issuers": [{"iss": ISSUER, "jwks_file": "keys.json"}], "leeway_s": 5}))
    verifier = JwtVerifier.from_file(config)
    aud = "https://svc.example/cds-services/x"
    claims = anyio.run(verifier.verify, token(aud), aud)
    assert claims["iss"] == ISSUER


def test_tokens_are_never_logged(base: str, caplog: pytest.LogCaptureFixture) -> None:
    url = f"{base}/cds-services/{KFRE}"
    bad = token("https://elsewhere.example")
    with caplog.at_level("DEBUG"):
        post(base, KFRE, call_body(kfre_prefetch()), auth=f"Bearer {bad}")
        post(base, KFRE, call_body(kfre_prefetch()), auth=f"Bearer {token(url)}")
    assert bad not in caplog.text
    assert bad.split(".")[1] not in caplog.text


# -- feedback ----------------------------------------------------------------------------------


def test_feedback_is_stored_with_the_ko_version(base: str, hooks: CdsHooks, store_path: Path) -> None:
    (card,) = post(base, KFRE, call_body(kfre_prefetch())).json()["cards"]
    body = {"feedback": [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-01T12:00:00Z"}]}
    answer = post(base, KFRE, body, path="/feedback")
    assert answer.status_code == 200, answer.text
    stored = [r for r in hooks.feedback if r["card"] == card["uuid"]]
    assert stored and stored[0]["ko"] == "kfre" and stored[0]["version"] == "1.0.0"
    # Persisted: another process opening the same file reads it.
    reopened = [r for r in CdsStore(store_path).feedback() if r["card"] == card["uuid"]]
    assert reopened == stored


def test_bad_feedback_is_400_and_unauthenticated_is_401(base: str) -> None:
    assert post(base, KFRE, {"feedback": [{"card": "x", "outcome": "maybe"}]}, path="/feedback").status_code == 400
    assert post(base, KFRE, {"feedback": []}, path="/feedback").status_code == 400
    body = {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-11-01T12:00:00Z"}]}
    assert post(base, KFRE, body, path="/feedback", auth=None).status_code == 401


def test_issuer_jwks_from_a_url() -> None:
    keys = json.dumps(_jwks()).encode()

    class Jwks(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(keys)))
            self.end_headers()
            self.wfile.write(keys)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
        verifier = JwtVerifier([TrustedIssuer(ISSUER, jwks_url=url)])
        aud = "https://svc.example/cds-services/x"
        assert anyio.run(verifier.verify, token(aud, alg="RS384", kid="rsa1"), aud)["iss"] == ISSUER
    finally:
        server.shutdown()
        server.server_close()


# -- PLCOm2012 from a full record, and bad data in a large prefetch ---------------------------------

PLCO = "plcom2012-1.0.0-risk"


@pytest.fixture(scope="module")
def plco_base() -> Iterator[str]:
    ko = KnowledgeObject.from_path(SHELF / "plcom2012" / "1.0.0")
    app = FastAPI()
    app.router.routes.extend(CdsHooks(lambda request: [ko], CdsSettings(no_auth=True)).routes)
    yield from _serve(app)


def test_plco_card_from_a_full_record_has_the_direct_risk(plco_base: str) -> None:
    ko = KnowledgeObject.from_path(SHELF / "plcom2012" / "1.0.0")
    risk = ko.call("risk", PLCO_DIRECT).result["risk_6y"]
    prefetch = plco_resources(when=_days_ago(10))
    (card,) = post(plco_base, PLCO, call_body(prefetch), auth=None).json()["cards"]
    assert f"risk_6y {risk * 100:.1f} %" in card["summary"]
    assert card["indicator"] == "warning"  # above the 1.51 % screening threshold
    assert "| cigarettes_per_day | 1.5 | packs/day |" in card["detail"]
    assert "FamilyMemberHistory/f1" in card["detail"]


def test_plco_card_names_what_the_record_lacks(plco_base: str) -> None:
    prefetch = plco_resources(when=_days_ago(10))
    prefetch["years_since_quit"] = searchset(kind="Observation")
    prefetch["family_lung_cancer_history"] = searchset(kind="FamilyMemberHistory")
    (card,) = post(plco_base, PLCO, call_body(prefetch), auth=None).json()["cards"]
    assert card["summary"].endswith("cannot compute, missing years_since_quit")
    assert "**years_since_quit** (missing): no final Observation with code 63632-4" in card["detail"]


@pytest.mark.parametrize(
    ("override", "status", "expected"),
    [
        pytest.param(
            {"bmi": searchset(quantity_obs("b1", "39156-5", 27, "furlongs"))}, 200, "cannot be converted", id="unit"
        ),
        pytest.param(
            {"bmi": searchset({**quantity_obs("b1", "39156-5", 27, "kg/m2"), "valueQuantity": {"value": "fat"}})},
            400,
            "unusable FHIR data: invalid FHIR R4 Observation/b1: valueQuantity.value",
            id="non-numeric-json",
        ),
        pytest.param({"bmi": {"resourceType": "Bundle", "type": "history"}}, 400, "type 'history'", id="bundle-type"),
        pytest.param({"bmi": {"resourceType": "Bundle", "type": "searchset", "entry": 3}}, 400, "array", id="entry"),
        pytest.param({"bmi": [1, 2]}, 400, "expected a FHIR resource", id="not-object"),
    ],
)
def test_bad_data_in_a_full_prefetch_is_a_card_or_400(
    plco_base: str, override: dict[str, Any], status: int, expected: str
) -> None:
    answer = post(plco_base, PLCO, call_body(plco_resources(when=_days_ago(10)) | override), auth=None)
    assert answer.status_code == status
    text = answer.json()["cards"][0]["detail"] if status == 200 else answer.json()["detail"]
    assert expected in text
