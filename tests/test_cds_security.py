"""CDS Hooks security: audience from configuration, hostile tokens and bodies, JWKS, replay, FHIR fetches.

The audience and hostile-input tests run against the real ``kgrid serve`` (uvicorn and all); the
others against the real routes on an in-process uvicorn, with real loopback JWKS and FHIR servers.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest
from activator_server import Server
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from fhir_data import creatinine, patient, searchset
from starlette.responses import JSONResponse
from starlette.routing import Route
from test_cds_hooks import _jwks, _serve, token

from activator.cds_auth import AuthError, JwtVerifier, TrustedIssuer
from activator.cds_store import CdsStore
from activator.routes.cds_hooks import CdsHooks, CdsSettings
from kgrid_py.ko import KnowledgeObject

SHELF = Path(__file__).resolve().parent.parent / "knowledge_objects"
ISSUER = "https://ehr.example.org"
PUBLIC = "https://cds.example.org"
EGFR = "ckd-epi-egfr-2.0.0-egfr-cr"


def _days_ago(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() - days * 86400))


def _body(**context: Any) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": "p1", **context},
        "prefetch": {"patient": patient(), "creatinine": searchset(creatinine(1.1, when=_days_ago(3)))},
    }


def _forge(claims: dict[str, Any], **raw: str) -> str:
    """An ES256 token signed with the trusted key; ``raw`` claims are JSON text PyJWT would not write."""
    from test_cds_hooks import EC_KEY

    def encode(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = json.dumps(claims)[:-1] + "".join(f', "{k}": {v}' for k, v in raw.items()) + "}"
    header = encode(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "ec1"}).encode())
    signing_input = f"{header}.{encode(payload.encode())}"
    signature = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).sign(signing_input.encode(), EC_KEY)
    return f"{signing_input}.{encode(signature)}"


# -- a real kgrid serve ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("cds-security")
    (folder / "jwks.json").write_text(json.dumps(_jwks()))
    (folder / "issuers.json").write_text(json.dumps({"issuers": [{"iss": ISSUER, "jwks_file": "jwks.json"}]}))
    args = ["--cds-issuers", str(folder / "issuers.json"), "--public-url", PUBLIC, "--cds-db", str(folder / "db")]
    with Server(SHELF, *args, "--no-verify-vectors", log=folder / "log") as server:
        yield server


def _post(server: Server, service: str, body: Any, auth: str | None, **headers: str) -> httpx.Response:
    if auth is not None:
        headers["Authorization"] = f"Bearer {auth}"
    return httpx.post(f"{server.url}/cds-services/{service}", json=body, headers=headers)


def test_the_audience_is_the_public_url_never_the_host_header(served: Server) -> None:
    evil = token(f"http://evil.example/cds-services/{EGFR}")
    for headers in ({"Host": "evil.example"}, {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}):
        answer = _post(served, EGFR, _body(), evil, **headers)
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["detail"] == f"the JWT's 'aud' is not this service's URL ({PUBLIC}/cds-services/{EGFR})"
        assert answer.headers["www-authenticate"].startswith('Bearer realm="cds-hooks", error="invalid_token"')
    # The server's own address is not the audience either; only the configured public URL is.
    assert _post(served, EGFR, _body(), token(f"{served.url}/cds-services/{EGFR}")).status_code == 401
    assert _post(served, EGFR, _body(), token(f"{PUBLIC}/cds-services/{EGFR}")).status_code == 200


def test_no_token_gets_a_bearer_challenge(served: Server) -> None:
    answer = _post(served, EGFR, _body(), None)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="cds-hooks"'
    assert answer.json()["type"].endswith("/unauthorized")


def test_hostile_tokens_and_bodies_are_4xx_never_500(served: Server) -> None:
    aud = f"{PUBLIC}/cds-services/{EGFR}"
    now = int(time.time())
    base_claims = {"iss": ISSUER, "aud": aud, "iat": now, "jti": str(uuid.uuid4())}
    forged = [
        _forge(base_claims, exp="1" + "0" * 400),  # exp = 10**400
        _forge(base_claims, exp="1e400"),  # a float that parses to infinity
        _forge(base_claims, exp="Infinity"),
        _forge(base_claims | {"exp": now + 60}, nbf="-1e400"),
        _forge({k: v for k, v in base_claims.items() if k != "jti"} | {"exp": now + 60}, jti="7"),
        token(aud, alg="ES256", kid="rsa1"),  # the kid names an RSA key; the token says ES256
        token(aud, alg="RS256", kid="ec1", key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        token(aud, alg="ES384", kid="ec1", key=ec.generate_private_key(ec.SECP384R1())),  # P-256 key for ES384
    ]
    for bad in forged:
        answer = _post(served, EGFR, _body(), bad)
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
    surrogates = [
        '{"hook": "patient-view", "hookInstance": "\\ud800", "context": {"userId": "u", "patientId": "\\udfff"}}',
        '{"hook": "patient-view", "hookInstance": "x", "context": {"userId": "u", "patientId": "p\\ud800"}}',
        '{"\\ud800": 1, "hook": "patient-view"}',
    ]
    for text in surrogates:
        answer = httpx.post(
            f"{served.url}/cds-services/{EGFR}",
            content=text.encode(),
            headers={"Authorization": f"Bearer {token(aud)}", "Content-Type": "application/json"},
        )
        assert answer.status_code == 400, answer.text
        assert "lone UTF-16 surrogate" in answer.json()["detail"]
    feedback = '{"feedback": [{"card": "\\ud800", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}'
    answer = httpx.post(
        f"{served.url}/cds-services/{EGFR}/feedback",
        content=feedback.encode(),
        headers={"Authorization": f"Bearer {token(aud + '/feedback')}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    assert "Traceback" not in served.read_log()


def test_a_wrong_content_type_is_415(served: Server) -> None:
    answer = httpx.post(
        f"{served.url}/cds-services/{EGFR}",
        content=json.dumps(_body()),
        headers={"Authorization": f"Bearer {token(f'{PUBLIC}/cds-services/{EGFR}')}", "Content-Type": "text/plain"},
    )
    assert answer.status_code == 415
    assert answer.headers["content-type"] == "application/problem+json"


def test_cors_for_browser_clients(served: Server) -> None:
    preflight = httpx.options(
        f"{served.url}/cds-services/{EGFR}",
        headers={
            "Origin": "https://ehr.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in preflight.headers["access-control-allow-methods"]
    listing = httpx.get(f"{served.url}/cds-services", headers={"Origin": "https://ehr.example.org"})
    assert listing.headers["access-control-allow-origin"] == "*"
    refused = _post(served, EGFR, _body(), None, Origin="https://ehr.example.org")
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"


# -- replay across workers -------------------------------------------------------------------------

_CLAIMER = """
import sys, time
from pathlib import Path
from activator.cds_store import CdsStore
store = CdsStore(Path(sys.argv[1]))
won = sum(store.claim("iss", f"jti-{n}", time.time() + 60, time.time()) for n in range(200))
print(won)
"""


def test_a_jti_is_accepted_once_across_processes(tmp_path: Path) -> None:
    db = tmp_path / "cds.sqlite3"
    racers = [subprocess.Popen([sys.executable, "-c", _CLAIMER, str(db)], stdout=subprocess.PIPE) for _ in range(3)]
    wins = [int(p.communicate(timeout=60)[0]) for p in racers]
    assert sum(wins) == 200  # each of the 200 jtis won by exactly one process


def test_two_app_instances_share_the_replay_store(tmp_path: Path) -> None:
    db = tmp_path / "cds.sqlite3"
    first = JwtVerifier([TrustedIssuer(ISSUER, jwks=_jwks())], store=CdsStore(db))
    second = JwtVerifier([TrustedIssuer(ISSUER, jwks=_jwks())], store=CdsStore(db))
    aud = f"{PUBLIC}/cds-services/x"
    once = token(aud)
    assert anyio.run(first.verify, once, aud)["iss"] == ISSUER
    with pytest.raises(AuthError, match="replay"):
        anyio.run(second.verify, once, aud)


def test_expired_jtis_are_purged_in_bounded_batches(tmp_path: Path) -> None:
    store = CdsStore(tmp_path / "cds.sqlite3")
    for n in range(600):
        store.claim("iss", f"old-{n}", 10.0, 0.0)
    assert store.jti_count() <= 600
    before = store.jti_count()
    assert store.purge(now=100.0) == min(256, before)
    assert store.claim("iss", "old-599", 200.0, 100.0)  # an expired jti's row is taken over, not a replay


# -- JWKS over HTTP --------------------------------------------------------------------------------


class _SlowJwks:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.fetches = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        jwks = self
        keys = json.dumps(_jwks()).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                jwks.fetches += 1
                time.sleep(jwks.delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(keys)))
                self.end_headers()
                self.wfile.write(keys)

        return Handler


def test_jwks_fetch_does_not_block_and_unknown_kids_do_not_refetch(tmp_path: Path) -> None:
    jwks = _SlowJwks(delay=1.5)
    server = ThreadingHTTPServer(("127.0.0.1", 0), jwks.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        verifier = JwtVerifier([TrustedIssuer(ISSUER, jwks_url=url)], jwks_refresh_s=60)
        kos = [KnowledgeObject.from_path(SHELF / "ckd-epi-egfr" / "2.0.0")]
        hooks = CdsHooks(lambda request: kos, CdsSettings(verifier=verifier, public_url=PUBLIC))
        app = FastAPI(routes=[Route("/health", lambda request: JSONResponse({"ok": True})), *hooks.routes])
        serving = _serve(app)
        base = next(serving)
        aud = f"{PUBLIC}/cds-services/{EGFR}"
        results: list[int] = []

        def first_call() -> None:
            headers = {"Authorization": f"Bearer {token(aud)}"}
            results.append(httpx.post(f"{base}/cds-services/{EGFR}", json=_body(), headers=headers).status_code)

        call = threading.Thread(target=first_call)
        call.start()
        time.sleep(0.3)  # the JWKS fetch is under way
        started = time.perf_counter()
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
        assert time.perf_counter() - started < 0.5  # the event loop is free while the JWKS loads
        call.join(10)
        assert results == [200]
        for _ in range(20):  # forged tokens with unknown kids: refused without new fetches
            forged = token(aud, kid=str(uuid.uuid4()))
            answer = httpx.post(
                f"{base}/cds-services/{EGFR}", json=_body(), headers={"Authorization": f"Bearer {forged}"}
            )
            assert answer.status_code == 401
        assert jwks.fetches == 1
        next(serving, None)
    finally:
        server.shutdown()
        server.server_close()


# -- fhirServer fetches ----------------------------------------------------------------------------


class _HostileFhir:
    """Answers every search with ``mode``: a huge body, a slow drip, or a 500 naming an internal URL."""

    def __init__(self) -> None:
        self.mode = "huge"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fhir = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if fhir.mode == "error":
                    body = b'{"issue": "upstream http://10.0.0.7:8443/internal failed"}'
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.end_headers()  # no Content-Length: the size is only known by reading
                try:
                    self.wfile.write(b'{"resourceType": "Bundle", "type": "searchset", "entry": [')
                    for _ in range(20_000 if fhir.mode == "huge" else 60):
                        self.wfile.write(
                            b'{"resource": {"resourceType": "Basic"}},' * (100 if fhir.mode == "huge" else 1)
                        )
                        if fhir.mode == "slow":
                            time.sleep(0.1)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


@pytest.fixture(scope="module")
def hostile_fhir() -> Iterator[tuple[str, _HostileFhir]]:
    fhir = _HostileFhir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fhir.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir", fhir
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def open_base(hostile_fhir: tuple[str, _HostileFhir]) -> Iterator[str]:
    kos = [KnowledgeObject.from_path(SHELF / "ckd-epi-egfr" / "2.0.0")]
    settings = CdsSettings(no_auth=True, fhir_timeout_s=1.0, fhir_max_bytes=1_000_000)
    app = FastAPI()
    app.router.routes.extend(CdsHooks(lambda request: kos, settings).routes)
    yield from _serve(app)


@pytest.mark.parametrize("mode", ["huge", "slow", "error"])
def test_fhir_fetches_are_bounded_and_echo_nothing(
    open_base: str, hostile_fhir: tuple[str, _HostileFhir], mode: str
) -> None:
    url, fhir = hostile_fhir
    fhir.mode = mode
    body = _body()
    del body["prefetch"]["creatinine"]
    body["fhirServer"] = url
    started = time.perf_counter()
    answer = httpx.post(f"{open_base}/cds-services/{EGFR}", json=body, timeout=30)
    assert time.perf_counter() - started < 5
    assert answer.status_code == 412
    detail = answer.json()["detail"]
    assert detail in ("could not fetch creatinine from the FHIR server", "the FHIR server did not answer within 1 s")
    assert "503" not in detail and "10.0.0.7" not in detail and url not in detail


def test_fhir_servers_are_allow_listed_per_issuer(tmp_path: Path) -> None:
    config = tmp_path / "issuers.json"
    (tmp_path / "jwks.json").write_text(json.dumps(_jwks()))
    config.write_text(
        json.dumps(
            {"issuers": [{"iss": ISSUER, "jwks_file": "jwks.json", "fhir_servers": ["https://fhir.example.org/r4"]}]}
        )
    )
    verifier = JwtVerifier.from_file(config)
    assert verifier.issuers[ISSUER].fhir_servers == ("https://fhir.example.org/r4",)
    from activator.routes.cds_hooks import _allowed

    allowed = ("https://fhir.example.org/r4",)
    assert _allowed("https://fhir.example.org/r4", allowed)
    assert _allowed("https://fhir.example.org/r4/Observation?code=x", allowed)
    assert _allowed("https://fhir.example.org:443/r4/", allowed)
    for refused in (
        "http://fhir.example.org/r4",  # another scheme
        "https://fhir.example.org:8443/r4",  # another port
        "https://fhir.example.org/r4x",  # not under the base path
        "https://fhir.example.org.evil.example/r4",
        "https://user@fhir.example.org/r4",
        "https://169.254.169.254/latest/meta-data",
    ):
        assert not _allowed(refused, allowed), refused
    config.write_text(json.dumps({"issuers": [{"iss": ISSUER, "jwks_file": "jwks.json", "fhir_servers": ["ftp://x"]}]}))
    with pytest.raises(ValueError, match="'fhir_servers' must be a list of http"):
        JwtVerifier.from_file(config)
