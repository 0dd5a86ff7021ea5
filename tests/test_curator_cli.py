"""The curator commands end to end, and `publish --to URL` against a tiny real activator stand-in."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kgrid_py.cli.curator import COMMANDS
from kgrid_py.cli.group import KgridGroup
from kgrid_py.curation.errors import http_status
from kgrid_py.curation.publish import publish_archive
from kgrid_py.curation.tokens import TokenStore
from kgrid_py.errors import KgridError
from kgrid_py.ko import KnowledgeObject
from kgrid_py.shelf import Shelf

PUBLISH_TOKEN = "publish-secret-token-0123456789"
READ_TOKEN = "admin-only-token-0123456789abcd"


@click.group(cls=KgridGroup)
def kgrid() -> None:
    """The commands as the lead registers them into `kgrid`."""


for _name, _command in COMMANDS.items():
    kgrid.add_command(_command, _name)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KGRID_TOKEN", raising=False)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0, **kwargs: object) -> str:
        result = runner.invoke(kgrid, list(args), catch_exceptions=False, **kwargs)  # type: ignore[arg-type]
        assert result.exit_code == code, result.output
        return result.output

    yield invoke


def test_curator_workflow(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert "created" in run("init", "my-score", "--author", "Dr Curator")
    ko = KnowledgeObject.from_path(tmp_path / "my-score")
    assert ko.status == "draft" and all(o.passed for o in ko.test())
    assert "my-score@1.0.0" in run("pack", "my-score", "--output", "my-score.zip")
    assert "keep secret" in run("keygen", "--dir", "keys", "--name", "curator")
    (tmp_path / "trust").mkdir()
    (tmp_path / "trust" / "curator.pub.pem").write_bytes((tmp_path / "keys" / "curator.pub.pem").read_bytes())
    assert "unsigned" in run("verify", "my-score.zip")
    run("verify", "my-score.zip", "--trust", "trust", code=1)
    run("sign", "my-score.zip", "--key", "keys/curator.key.pem")
    assert "signed by curator.pub" in run("verify", "my-score.zip", "--trust", "trust")
    out = run("publish", "my-score.zip", "--to", "shelf", "--require-signature", "--trust", "trust", "--actor", "dr")
    assert "my-score@1.0.0: published, status active" in out
    assert "nothing changed" in run("publish", "my-score.zip", "--to", "shelf", "--actor", "dr")
    assert "active -> deprecated" in run("status", "my-score@1.0.0", "--set", "deprecated", "--shelf", "shelf")
    assert run("status", "my-score@1", "--shelf", "shelf").strip() == "my-score@1.0.0: deprecated"
    assert Shelf(tmp_path / "shelf").load("my-score").call("risk", {"age": 60, "biomarker": 100}).result["risk"] > 0


def test_errors_are_one_line_and_exit_1(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("init", "my-score")
    out = run("init", "my-score", code=1)
    assert out.strip().count("\n") == 0 and "already exists" in out
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    assert "not a readable zip" in run("verify", "bad.zip", code=1)
    assert "not a valid KO id" in run("init", "Bad_Name", code=1)


def test_unsigned_archive_refused_when_a_signature_is_required(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("init", "my-score")
    run("pack", "my-score", "-o", "a.zip")
    run("keygen", "--dir", "trust", "--name", "k")
    (tmp_path / "trust" / "k.key.pem").rename(tmp_path / "k.key.pem")
    out = run("publish", "a.zip", "--to", "shelf", "--require-signature", "--trust", "trust", code=1)
    assert "not signed" in out
    assert not (tmp_path / "shelf" / "my-score").exists()


def test_init_then_torch_rebuild_still_validates(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    from kgrid_py.curation.build import build_ko

    run("init", "my-score")
    build_ko(tmp_path / "my-score")
    assert all(o.passed for o in KnowledgeObject.from_path(tmp_path / "my-score").test())


# -- publish --to URL against a stand-in for the activator's POST /kos -------------------------------


@pytest.fixture
def activator(tmp_path: Path) -> Iterator[tuple[str, Path, list[dict[str, str]]]]:
    """A real HTTP server on 127.0.0.1 doing what POST /kos must: auth, publish, map errors."""
    shelf = tmp_path / "served-shelf"
    tokens = TokenStore.from_config(
        {
            "tokens": [
                {"name": "alice", "roles": ["publish"], "token": PUBLISH_TOKEN},
                {"name": "ops", "roles": ["admin"], "token": READ_TOKEN},
            ]
        }
    )
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            seen.append({"path": self.path, "content-type": self.headers.get("Content-Type", "")})
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                if self.path != "/kos":
                    raise KgridError("no such route")
                principal = tokens.authorize(self.headers.get("Authorization"), "publish")
                outcome = publish_archive(body, shelf, actor=principal.name)
                self._send(outcome.http_status, outcome.as_dict())
            except KgridError as exc:
                self._send(http_status(exc) if self.path == "/kos" else 404, {"detail": str(exc)})

        def _send(self, code: int, payload: object) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", shelf, seen
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def archive(run) -> str:  # type: ignore[no-untyped-def]
    run("init", "my-score")
    run("pack", "my-score", "-o", "my-score.zip")
    return "my-score.zip"


def test_publish_to_url(run, archive: str, activator: tuple[str, Path, list[dict[str, str]]]) -> None:  # type: ignore[no-untyped-def]
    url, shelf, seen = activator
    out = run("publish", archive, "--to", url, "--token", PUBLISH_TOKEN)
    assert json.loads(out)["changed"] is True and PUBLISH_TOKEN not in out
    assert seen[-1] == {"path": "/kos", "content-type": "application/zip"}
    assert Shelf(shelf).resolve("my-score").status == "active"
    out = run("publish", archive, "--to", f"{url}/kos", env={"KGRID_TOKEN": PUBLISH_TOKEN})
    assert json.loads(out)["changed"] is False
    audit = (shelf / ".kgrid" / "audit.jsonl").read_text()
    assert "alice" in audit and PUBLISH_TOKEN not in audit


@pytest.mark.parametrize(
    ("token", "message"),
    [(None, "pass --token or set KGRID_TOKEN"), ("wrong-token-0123456789", "HTTP 401"), (READ_TOKEN, "HTTP 403")],
    ids=["no-token", "unknown-token", "wrong-role"],
)
def test_publish_to_url_refused(  # type: ignore[no-untyped-def]
    run, archive: str, activator: tuple[str, Path, list[dict[str, str]]], token: str | None, message: str
) -> None:
    url, shelf, _ = activator
    args = ["publish", archive, "--to", url] + (["--token", token] if token else [])
    out = run(*args, code=1)
    assert message in out and (token is None or token not in out)
    assert not (shelf / "my-score").exists()


def test_publish_to_url_reports_the_refusal_reason(  # type: ignore[no-untyped-def]
    run, tmp_path: Path, activator: tuple[str, Path, list[dict[str, str]]]
) -> None:
    (tmp_path / "evil.zip").write_bytes(b"PK\x03\x04 not really a zip")
    out = run("publish", "evil.zip", "--to", activator[0], "--token", PUBLISH_TOKEN, code=1)
    assert "HTTP 422" in out and "not a readable zip" in out


def test_publish_to_an_unreachable_url(run, archive: str) -> None:  # type: ignore[no-untyped-def]
    out = run("publish", archive, "--to", "http://127.0.0.1:9/", "--token", PUBLISH_TOKEN, code=1)
    assert "ConnectionError" in out and PUBLISH_TOKEN not in out
