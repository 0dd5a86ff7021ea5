"""Curation against a real ``kgrid serve``: faithful refusals, build metadata, UTC sunsets, reserved ids.

One server (``--tokens``, ``--require-signature``, ``--trust``) serves the module's tests.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from activator_server import GOOD, Server
from click.testing import CliRunner
from demo_ko import write_demo_ko

from kgrid_py.cli import cli
from kgrid_py.curation.archive import inspect, pack
from kgrid_py.curation.build import seal
from kgrid_py.curation.signing import generate_keypair, load_private_key, sign_archive
from kgrid_py.curation.tokens import hash_token

PUBLISH = "curation-publish-token-0123456789"
ADMIN = "curation-admin-token-0123456789ab"


class World:
    def __init__(self, root: Path, server: Server, key: Path) -> None:
        self.root, self.server, self.key = root, server, key
        self.client = httpx.Client(base_url=server.url, timeout=60)
        self._n = 0

    def archive(
        self, version: str, *, signed: bool = True, edit: Callable[[dict[str, Any]], None] | None = None
    ) -> Path:
        self._n += 1
        path = write_demo_ko(self.root / f"src-{self._n}", version, "draft")
        if edit is not None:
            raw = json.loads((path / "metadata.json").read_text())
            edit(raw)
            (path / "metadata.json").write_text(json.dumps(raw))
            seal(path)
        data = pack(path)
        if signed:
            data = sign_archive(data, load_private_key(self.key))
        file = self.root / f"archive-{self._n}.zip"
        file.write_bytes(data)
        return file

    def publish_cli(self, archive: Path, token: str | None = PUBLISH) -> Any:
        args = ["publish", str(archive), "--to", self.server.url]
        env = {"KGRID_TOKEN": token} if token else {"KGRID_TOKEN": ""}
        return CliRunner().invoke(cli, args, env=env)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("curation-http")
    shelf = root / "shelf"
    shelf.mkdir()
    key, public = generate_keypair(root / "keys", "curator")
    trust = root / "trust"
    trust.mkdir()
    shutil.copy(public, trust / "curator.pub.pem")
    tokens = root / "tokens.json"
    entries = [
        {"name": "alice", "roles": ["publish"], "sha256": hash_token(PUBLISH)},
        {"name": "ops", "roles": ["admin"], "sha256": hash_token(ADMIN)},
    ]
    tokens.write_text(json.dumps({"tokens": entries}))
    args = ["--tokens", str(tokens), "--require-signature", "--trust", str(trust), "--no-watch"]
    with Server(shelf, *args, log=root / "server.log") as server:
        w = World(root, server, key)
        yield w
        w.client.close()


def test_publish_to_url_reports_a_missing_signature_not_the_token(world: World) -> None:
    result = world.publish_cli(world.archive("1.0.0", signed=False))
    assert result.exit_code == 1
    assert "HTTP 403" in result.output and "not signed" in result.output and "SignatureMissing" in result.output
    assert "kgrid sign" in result.output
    assert "token" not in result.output.lower()


def test_publish_to_url_reports_a_missing_token_as_such(world: World) -> None:
    result = world.publish_cli(world.archive("1.0.0"), token=None)
    assert result.exit_code == 1 and "HTTP 401" in result.output and "KGRID_TOKEN" in result.output


def test_publish_to_url_reports_a_wrong_role(world: World) -> None:
    result = world.publish_cli(world.archive("1.0.0"), token=ADMIN)
    assert result.exit_code == 1 and "HTTP 403" in result.output and "publish role" in result.output
    assert ADMIN not in result.output


def test_the_served_digest_is_the_signed_one(world: World) -> None:
    archive = world.archive("1.0.0")
    result = world.publish_cli(archive)
    assert result.exit_code == 0, result.output
    signature = inspect(archive.read_bytes()).signature
    assert signature is not None
    answer = world.client.post("/demo-bmi/1.0.0/bmi", json=GOOD)
    assert answer.status_code == 200 and answer.json()["info"]["content_digest"] == signature["manifest_sha256"]


def _drop_adjusted(raw: dict[str, Any]) -> None:
    raw["functions"][0]["outputs"] = [o for o in raw["functions"][0]["outputs"] if o["name"] != "adjusted"]


def test_build_metadata_does_not_slip_past_immutability_over_http(world: World) -> None:
    world.publish_cli(world.archive("1.0.0"))  # present (or already there): 200/201
    result = world.publish_cli(world.archive("1.0.0+x", edit=_drop_adjusted))
    assert result.exit_code == 1 and "HTTP 409" in result.output and "build metadata" in result.output
    listed = world.client.get("/kos/demo-bmi").json()
    assert "1.0.0+x" not in json.dumps(listed)


def test_a_sunset_with_an_offset_is_stored_in_utc_and_calls_still_work(world: World) -> None:
    assert world.publish_cli(world.archive("1.1.0")).exit_code == 0
    body = {"status": "deprecated", "successor": "demo-bmi@1.1.0", "sunset": "2027-06-30T00:00:00+02:00"}
    changed = world.client.post("/kos/demo-bmi/1.0.0/status", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["sunset"] == "2027-06-29T22:00:00Z"
    for _ in range(2):  # was a 500 on every call
        call = world.client.post("/demo-bmi/1.0.0/bmi", json=GOOD)
        assert call.status_code == 200, call.text
        assert call.headers["sunset"] == "Tue, 29 Jun 2027 22:00:00 GMT"
        assert any("deprecated" in w and "demo-bmi@1.1.0" in w for w in call.json()["info"]["warnings"])
    garbage = world.client.post(
        "/kos/demo-bmi/1.0.0/status",
        json={**body, "sunset": "2027-02-30"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert garbage.status_code == 422


@pytest.mark.parametrize("reserved", ["metrics", "kos", "v2", "cds-services"])
def test_a_reserved_id_is_refused(world: World, reserved: str) -> None:
    def rename(raw: dict[str, Any]) -> None:
        raw["dc:identifier"], raw["@id"] = reserved, f"{reserved}/1.0.0"

    result = world.publish_cli(world.archive("1.0.0", edit=rename, signed=False))  # sign refuses it too
    assert result.exit_code == 1 and "HTTP 422" in result.output and "reserved" in result.output
