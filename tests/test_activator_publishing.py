"""Publishing to a running activator: ``POST /kos`` and the status route, against ``kgrid serve``.

One real server process (``--tokens``, ``--require-signature``, ``--trust``, ``--no-watch``, so
every version served after a publication was loaded by the route's own reload) serves the tests
of this module, in order: publish, refusals, lifecycle, audit, logs; then the curator walk-through
of docs/curating.md runs against the same server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from activator_server import GOOD, Server
from archives import entries_of, rebuild
from click.testing import CliRunner
from demo_ko import write_demo_ko

from kgrid_py.cli import cli
from kgrid_py.curation.archive import pack
from kgrid_py.curation.audit import read_audit
from kgrid_py.curation.build import seal
from kgrid_py.curation.signing import generate_keypair, load_private_key, sign_archive
from kgrid_py.curation.tokens import hash_token

PUBLISH_TOKEN = "pub-0123456789-abcdefghij-secret"
ADMIN_TOKEN_ROLE = "adm-0123456789-abcdefghij-secret"
CAP = 2_000_000
ZIP = {"Content-Type": "application/zip"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class World:
    def __init__(self, root: Path, server: Server, shelf: Path, key: Path, trust: Path) -> None:
        self.root, self.server, self.shelf, self.key, self.trust = root, server, shelf, key, trust
        self.client = httpx.Client(base_url=server.url, timeout=60)
        self._n = 0

    def archive(self, version: str, edit: Callable[[dict[str, Any]], None] | None = None, signed: bool = True) -> bytes:
        self._n += 1
        path = write_demo_ko(self.root / f"src-{self._n}", version, "draft")
        if edit is not None:
            raw = json.loads((path / "metadata.json").read_text())
            edit(raw)
            (path / "metadata.json").write_text(json.dumps(raw, indent=2))
            seal(path)
        data = pack(path)
        return sign_archive(data, load_private_key(self.key)) if signed else data

    def post(self, data: bytes, token: str | None = PUBLISH_TOKEN, **headers: str) -> httpx.Response:
        sent = {**ZIP, **(bearer(token) if token else {}), **headers}
        return self.client.post("/kos", content=data, headers=sent)

    def set_status(self, ref: str, token: str = ADMIN_TOKEN_ROLE, **body: str) -> httpx.Response:
        ko_id, _, version = ref.partition("@")
        return self.client.post(f"/kos/{ko_id}/{version}/status", json=body, headers=bearer(token))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("publishing")
    shelf = root / "served"
    shelf.mkdir()
    key, public = generate_keypair(root / "keys", "curator")
    trust = root / "trust"
    trust.mkdir()
    shutil.copy(public, trust / "curator.pub.pem")
    tokens = root / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"name": "alice", "roles": ["publish"], "sha256": hash_token(PUBLISH_TOKEN)},
                    {"name": "ops", "roles": ["admin"], "token": ADMIN_TOKEN_ROLE},
                ]
            }
        )
    )
    args = ["--tokens", str(tokens), "--require-signature", "--trust", str(trust), "--no-watch"]
    args += ["--max-archive-bytes", str(CAP), "--inference-threads", "1"]
    server = Server(shelf, *args, log=root / "server.log")
    with server:
        w = World(root, server, shelf, key, trust)
        yield w
        w.client.close()


def kgrid_command() -> list[str]:
    script = Path(sys.executable).parent / "kgrid"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kgrid_py"]


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


# -- publishing ----------------------------------------------------------------------------------


def test_publish_with_the_real_cli_then_call_the_new_version(world: World) -> None:
    assert world.client.post("/demo-bmi/1.0.0/bmi", json=GOOD).status_code == 404
    archive = world.root / "demo-1.0.0.zip"
    archive.write_bytes(world.archive("1.0.0"))
    env = {k: v for k, v in os.environ.items() if k != "KGRID_TOKEN"}
    result = subprocess.run(
        [*kgrid_command(), "publish", str(archive), "--to", world.server.url, "--token", PUBLISH_TOKEN],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert (body["id"], body["version"], body["changed"], body["status"]) == ("demo-bmi", "1.0.0", True, "active")
    assert body["served"] is True and body["signer"] == "curator.pub"
    assert PUBLISH_TOKEN not in result.stdout + result.stderr
    response = world.client.post("/demo-bmi/1.0.0/bmi", json=GOOD)
    assert response.status_code == 200 and response.json()["result"]["bmi"] == pytest.approx(70 / 1.75**2)
    assert "deprecation" not in response.headers
    # the identical archive again: 200, nothing changed
    again = world.post(archive.read_bytes())
    assert again.status_code == 200 and again.json()["changed"] is False


def test_a_new_version_is_201_with_its_location(world: World) -> None:
    def describe(raw: dict[str, Any]) -> None:
        raw["dc:description"] = "A clearer description."

    response = world.post(world.archive("1.1.0", describe))
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/kos/demo-bmi/1.1.0"
    assert world.client.post("/demo-bmi/1.1.0/bmi", json=GOOD).status_code == 200
    assert world.client.get("/kos/demo-bmi").json()["default_version"] == "1.1.0"


def test_same_version_other_content_is_409(world: World) -> None:
    def other(raw: dict[str, Any]) -> None:
        raw["dc:description"] = "Sneakily different."

    body = _problem(world.post(world.archive("1.0.0", other)), 409)
    assert "immutable" in body["detail"] and body["error"] == "VersionConflict"


def test_tokens_and_roles(world: World) -> None:
    data = world.archive("1.2.0")
    no_token = world.post(data, token=None)
    assert _problem(no_token, 401) and no_token.headers["www-authenticate"].startswith("Bearer")
    _problem(world.post(data, token="not-a-token-anyone-issued-000"), 401)
    _problem(world.post(data, Authorization=f"Basic {PUBLISH_TOKEN}"), 401)
    body = _problem(world.post(data, token=ADMIN_TOKEN_ROLE), 403)
    assert "'publish' role" in body["detail"] and ADMIN_TOKEN_ROLE not in json.dumps(body)
    body = _problem(world.set_status("demo-bmi@1.0.0", token=PUBLISH_TOKEN, status="deprecated"), 403)
    assert "'admin' role" in body["detail"]
    _problem(world.set_status("demo-bmi@1.0.0", token="nobody-has-this-token-xxxx", status="deprecated"), 401)
    assert world.client.get("/kos/demo-bmi/1.0.0/status").json()["status"] == "active"
    # the token store's admin role also reloads; a publish-only token does not
    assert world.client.post("/admin/reload", headers=bearer(ADMIN_TOKEN_ROLE)).status_code == 200
    _problem(world.client.post("/admin/reload", headers=bearer(PUBLISH_TOKEN)), 403)


def test_unsigned_or_untrusted_archive_is_403_when_signatures_are_required(world: World) -> None:
    body = _problem(world.post(world.archive("1.2.0", signed=False)), 403)
    assert body["error"] == "SignatureMissing"
    stranger, _ = generate_keypair(world.root / "stranger", "mallory")
    forged = sign_archive(world.archive("1.2.0", signed=False), load_private_key(stranger))
    assert _problem(world.post(forged), 403)["error"] == "UntrustedSignature"


def _unit_on_adjusted(raw: dict[str, Any]) -> None:
    raw["functions"][0]["outputs"][1]["unit"] = "kg/m2"


def test_breaking_change_without_a_new_major_is_422_naming_it(world: World) -> None:
    body = _problem(world.post(world.archive("1.2.0", _unit_on_adjusted)), 422)
    assert body["error"] == "IncompatibleChange" and "new major version" in body["detail"]
    assert "output 'adjusted' unit changed" in body["detail"]
    assert any("output 'adjusted' unit changed" in c for c in body["changes"])
    assert "1.2.0" not in world.client.get("/kos/demo-bmi").text


def test_hostile_archive_is_422_and_nothing_is_written_outside_the_shelf(world: World) -> None:
    contents = entries_of(world.archive("1.3.0", signed=False))
    before = sorted(p.relative_to(world.root) for p in world.root.rglob("*") if ".kgrid" not in p.parts)
    for name, extra in [("../escaped.txt", b"owned"), ("/tmp/absolute-escape.txt", b"owned")]:
        body = _problem(world.post(rebuild(contents, [(name, extra)])), 422)
        assert body["error"].startswith("Archive"), body
    after = sorted(p.relative_to(world.root) for p in world.root.rglob("*") if ".kgrid" not in p.parts)
    assert after == before
    assert not (world.shelf.parent / "escaped.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()
    assert list((world.shelf / ".kgrid" / "staging").iterdir()) == []
    _problem(world.post(b"this is not a zip"), 422)


def test_oversize_is_413_and_wrong_content_type_is_415(world: World) -> None:
    body = _problem(world.post(b"\0" * (CAP + 1)), 413)
    assert body["limit"] == CAP

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        for _ in range(CAP // 65536 + 2):
            yield b"\0" * 65536

    _problem(world.client.post("/kos", content=chunks(), headers={**ZIP, **bearer(PUBLISH_TOKEN)}), 413)
    data = world.archive("1.3.0")
    body = _problem(world.post(data, **{"Content-Type": "application/json"}), 415)
    assert "application/zip" in body["accept"]
    _problem(world.client.post("/kos", content=data, headers=bearer(PUBLISH_TOKEN)), 415)
    assert world.post(data, **{"Content-Type": "application/octet-stream"}).status_code == 201


# -- lifecycle -------------------------------------------------------------------------------------


def test_deprecate_then_retire_through_the_admin_route(world: World) -> None:
    response = world.set_status("demo-bmi@1.0.0", status="deprecated", successor="demo-bmi@1.1.0", sunset="2027-06-30")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["previous"], body["status"], body["changed"]) == ("active", "deprecated", True)
    assert body["sunset"] == "2027-06-30" and body["successor"] == "demo-bmi@1.1.0"
    call = world.client.post("/demo-bmi/1.0.0/bmi", json=GOOD)
    assert call.status_code == 200
    assert call.headers["deprecation"].startswith("@") and call.headers["deprecation"][1:].isdigit()
    assert call.headers["sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
    assert call.headers["link"] == '</demo-bmi/1.1.0/bmi>; rel="successor-version"'
    assert "deprecation" not in world.client.post("/demo-bmi/1.1.0/bmi", json=GOOD).headers
    # a forbidden or malformed change is refused with the reason
    assert _problem(world.set_status("demo-bmi@1.0.0", status="draft"), 422)
    assert _problem(world.set_status("demo-bmi@1.0.0", status="retired", sunset="someday"), 422)
    assert _problem(world.set_status("demo-bmi@9.9.9", status="retired"), 404)
    assert _problem(world.set_status("demo-bmi@1", status="retired"), 400)
    # retire: 410 with the successor
    assert world.set_status("demo-bmi@1.0.0", status="retired", successor="demo-bmi@1.1.0").json()["changed"]
    gone = _problem(world.client.post("/demo-bmi/1.0.0/bmi", json=GOOD), 410)
    assert gone["successor"] == "demo-bmi@1.1.0" and gone["successor_address"] == "/demo-bmi/1.1.0/bmi"
    body = _problem(world.set_status("demo-bmi@1.0.0", status="active"), 409)
    assert "retired" in body["detail"]


def test_every_publication_and_status_change_is_audited(world: World) -> None:
    records = read_audit(world.shelf / ".kgrid" / "audit.jsonl")
    published = [r for r in records if r["action"] == "publish" and r["outcome"] == "published"]
    assert {r["ref"] for r in published} >= {"demo-bmi@1.0.0", "demo-bmi@1.1.0", "demo-bmi@1.3.0"}
    assert all(r["actor"] == "alice" and len(r["digest"]) == 64 for r in published)
    refused = [r for r in records if r["outcome"] == "refused"]
    assert {r["http_status"] for r in refused if r["action"] == "publish"} >= {403, 409, 422}
    changes = [r for r in records if r["action"] == "status" and r["outcome"] == "changed"]
    assert [(r["actor"], r["status"]) for r in changes][:2] == [("ops", "deprecated"), ("ops", "retired")]
    text = (world.shelf / ".kgrid" / "audit.jsonl").read_text()
    assert PUBLISH_TOKEN not in text and ADMIN_TOKEN_ROLE not in text


def test_tokens_never_appear_in_the_server_log(world: World) -> None:
    log = world.server.read_log()
    assert "POST /kos 201" in log and "POST /kos 401" in log  # the access log is on
    for token in (PUBLISH_TOKEN, ADMIN_TOKEN_ROLE, hash_token(PUBLISH_TOKEN)):
        assert token not in log


# -- the curator walk-through of docs/curating.md ----------------------------------------------------


def test_the_curator_walkthrough_against_a_running_activator(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KGRID_TOKEN", PUBLISH_TOKEN)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    url = world.server.url
    # 1-2. init, (re)seal, validate, test
    run("init", "my-score", "--author", "Dr A. Curator")
    run("build", "my-score", "--seal-only")
    run("validate", "my-score")
    run("test", "./my-score")
    # 3-4. pack, keygen, sign, verify against the hospital's trust dir
    run("pack", "my-score", "--output", "my-score-1.0.0.zip")
    run("keygen", "--dir", "keys", "--name", "dr-curator")
    shutil.copy(tmp_path / "keys" / "dr-curator.pub.pem", world.trust / "dr-curator.pub.pem")
    run("sign", "my-score-1.0.0.zip", "--key", "keys/dr-curator.key.pem")
    assert "signed by dr-curator.pub" in run("verify", "my-score-1.0.0.zip", "--trust", str(world.trust))
    # 5. publish to the running activator (token from $KGRID_TOKEN)
    assert '"changed": true' in run("publish", "my-score-1.0.0.zip", "--to", url)
    # 6. call it
    call = world.client.post("/my-score/1.0.0/risk", json={"age": 63, "biomarker": 120})
    assert call.status_code == 200, call.text
    assert 0 < call.json()["result"]["risk"] < 1
    # 7. publish 1.1.0, then deprecate 1.0.0 through the admin route
    run("init", "my-score", "--version", "1.1.0", "--dir", "v1.1", "--author", "Dr A. Curator")
    run("pack", "v1.1/my-score", "--output", "my-score-1.1.0.zip")
    run("sign", "my-score-1.1.0.zip", "--key", "keys/dr-curator.key.pem")
    run("publish", "my-score-1.1.0.zip", "--to", url)
    monkeypatch.setenv("KGRID_TOKEN", ADMIN_TOKEN_ROLE)
    out = run(
        *("status", "my-score@1.0.0", "--set", "deprecated", "--successor", "my-score@1.1.0"),
        *("--sunset", "2027-06-30", "--to", url),
    )
    assert "my-score@1.0.0: active -> deprecated" in out and "sunset 2027-06-30" in out
    assert run("status", "my-score@1.0.0", "--to", url).startswith("my-score@1.0.0: deprecated")
    old = world.client.post("/my-score/1.0.0/risk", json={"age": 63, "biomarker": 120})
    assert old.status_code == 200 and old.headers["sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
    assert old.headers["link"] == '</my-score/1.1.0/risk>; rel="successor-version"'
    monkeypatch.setenv("KGRID_TOKEN", PUBLISH_TOKEN)  # a publish-only token cannot change a status
    result = runner.invoke(cli, ["status", "my-score@1.1.0", "--set", "deprecated", "--to", url])
    assert result.exit_code == 1 and "HTTP 403" in result.output and PUBLISH_TOKEN not in result.output


# -- remote shelves: kgrid_py.load and kgrid serve from a manifest URL ------------------------------


@pytest.fixture
def manifest_url(tmp_path: Path) -> Iterator[str]:
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    site = tmp_path / "site"
    site.mkdir()
    (site / "demo-bmi-1.0.0.zip").write_bytes(pack(write_demo_ko(tmp_path / "remote-src", "1.0.0", "draft")))
    (site / "manifest.json").write_text(json.dumps({"manifest": ["demo-bmi-1.0.0.zip"]}))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/manifest.json"
    httpd.shutdown()
    httpd.server_close()


def test_load_from_a_manifest_url(manifest_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kgrid_py

    monkeypatch.setenv("KGRID_CACHE", str(tmp_path / "cache"))
    ko = kgrid_py.load("demo-bmi@1", shelf=manifest_url)
    assert ko.version == "1.0.0" and ko.call("bmi", GOOD).result["bmi"] == pytest.approx(70 / 1.75**2)
    assert (tmp_path / "cache" / "shelf" / "demo-bmi" / "1.0.0" / "metadata.json").exists()


def test_serve_a_manifest_url(manifest_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KGRID_CACHE", str(tmp_path / "cache"))
    with Server(manifest_url, "--no-watch", "--inference-threads", "1", log=tmp_path / "serve.log") as server:  # type: ignore[arg-type]
        response = httpx.post(server.url + "/demo-bmi/1.0.0/bmi", json=GOOD, timeout=30)
        assert response.status_code == 200, response.text
    assert "demo-bmi@1.0.0: published from" in server.read_log()
