"""Publishing survives ``kill -9`` at every stage: a served version always has its audit entry.

A publishing process is killed (SIGKILL, through the ``KGRID_TEST_CRASH_AT`` hook of
:func:`kgrid_py.curation.audit.crash_point`) after unpacking, after the checks, after journalling, after
the rename, after the signer record and after the audit append. Opening the shelf afterwards must
leave no staging folder and no journal, and either nothing visible (with no ``published`` entry)
or the version visible with exactly one ``published`` entry and its signer record.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from activator_server import GOOD, Server
from demo_ko import write_demo_ko

from kgrid_py.curation.archive import pack
from kgrid_py.curation.audit import CRASH_ENV, read_audit, recover
from kgrid_py.curation.publish import PublishPolicy, publish_archive
from kgrid_py.curation.signing import generate_keypair, load_private_key, sign_archive
from kgrid_py.curation.tokens import hash_token
from kgrid_py.shelf import Shelf

STAGES = ["extracted", "checked", "journalled", "renamed", "recorded", "audited"]
VISIBLE_AFTER = {"renamed", "recorded", "audited"}
TOKEN = "crash-test-publish-token-0123456789"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    key, public = generate_keypair(tmp_path / "keys", "curator")
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(public, trust / "curator.pub.pem")
    archive = tmp_path / "demo.zip"
    archive.write_bytes(sign_archive(pack(write_demo_ko(tmp_path / "src", "1.0.0", "draft")), load_private_key(key)))
    return {"shelf": tmp_path / "shelf", "trust": trust, "archive": archive}


def _publish_in_a_process(world: dict[str, Path], stage: str) -> subprocess.CompletedProcess[str]:
    script = (
        "import sys; from pathlib import Path\n"
        "from kgrid_py.curation.publish import PublishPolicy, publish_archive\n"
        "policy = PublishPolicy(require_signature=True, trust_dir=Path(sys.argv[3]))\n"
        "publish_archive(Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]), policy, actor='alice')\n"
    )
    env = {**os.environ, CRASH_ENV: stage}
    args = [str(world["archive"]), str(world["shelf"]), str(world["trust"])]
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=120)


def _published(shelf: Path) -> list[dict[str, object]]:
    log = read_audit(shelf / ".kgrid" / "audit.jsonl")
    return [r for r in log if r.get("action") == "publish" and r.get("outcome") == "published"]


def _assert_consistent(shelf: Path) -> bool:
    """Recover as the activator and curator commands do, then check the invariant; returns whether the
    version is visible. Opening a Shelf alone only reads (a reader never writes to a shelf)."""
    recover(shelf)
    opened = Shelf(shelf)
    state = shelf / ".kgrid"
    assert not list((state / "staging").glob("*")), "a staging folder survived recovery"
    assert not list((state / "pending").glob("*")), "a journal entry survived recovery"
    visible = [e.version for e in opened.versions("demo-bmi")] == ["1.0.0"]
    published = _published(shelf)
    record = state / "records" / "demo-bmi" / "1.0.0.json"
    if visible:
        assert len(published) == 1, published
        assert published[0]["signer"] == "curator.pub" and published[0]["ref"] == "demo-bmi@1.0.0"
        assert json.loads(record.read_text())["signer"] == "curator.pub"
    else:
        assert published == [] and not (shelf / "demo-bmi" / "1.0.0").exists()
    return visible


@pytest.mark.parametrize("stage", STAGES)
def test_a_kill_at_any_stage_leaves_a_consistent_shelf(world: dict[str, Path], stage: str) -> None:
    result = _publish_in_a_process(world, stage)
    assert result.returncode == -signal.SIGKILL, result.stderr
    shelf = world["shelf"]
    assert _assert_consistent(shelf) == (stage in VISIBLE_AFTER)
    if stage == "journalled":
        assert read_audit(shelf / ".kgrid" / "audit.jsonl")[-1]["outcome"] == "interrupted"
    policy = PublishPolicy(require_signature=True, trust_dir=world["trust"])
    again = publish_archive(world["archive"].read_bytes(), shelf, policy, actor="alice")
    assert again.changed == (stage not in VISIBLE_AFTER)
    assert _assert_consistent(shelf)


def test_a_reader_never_writes_to_a_shelf_left_mid_publication(world: dict[str, Path]) -> None:
    """Opening and loading from a shelf only reads; the journal waits for the activator or a curator."""
    result = _publish_in_a_process(world, "renamed")
    assert result.returncode == -signal.SIGKILL, result.stderr
    shelf = world["shelf"]
    before = sorted(str(p.relative_to(shelf)) for p in (shelf / ".kgrid").rglob("*"))
    entries = Shelf(shelf).entries()
    after = sorted(str(p.relative_to(shelf)) for p in (shelf / ".kgrid").rglob("*"))
    assert after == before and any("pending" in name for name in before)
    assert [e.version for e in entries] == ["1.0.0"]
    assert _assert_consistent(shelf)


def test_republishing_repairs_a_version_served_without_its_entry(world: dict[str, Path]) -> None:
    """A shelf damaged by an older kgrid (version visible, no record, no entry) is repaired."""
    shelf = world["shelf"]
    policy = PublishPolicy(require_signature=True, trust_dir=world["trust"])
    publish_archive(world["archive"].read_bytes(), shelf, policy, actor="alice")
    (shelf / ".kgrid" / "audit.jsonl").unlink()
    (shelf / ".kgrid" / "records" / "demo-bmi" / "1.0.0.json").unlink()
    outcome = publish_archive(world["archive"].read_bytes(), shelf, policy, actor="alice")
    assert not outcome.changed
    (entry,) = _published(shelf)
    assert entry["repaired"] is True
    assert _assert_consistent(shelf)
    publish_archive(world["archive"].read_bytes(), shelf, policy, actor="alice")
    assert read_audit(shelf / ".kgrid" / "audit.jsonl")[-1]["outcome"] == "unchanged"


def test_a_server_killed_mid_publication_recovers_at_start_up(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of ``kgrid serve`` between the rename and the audit entry; the restart completes it."""
    shelf = world["shelf"]
    shelf.mkdir()
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": "alice", "roles": ["publish"], "sha256": hash_token(TOKEN)}]}))
    args = ["--tokens", str(tokens), "--require-signature", "--trust", str(world["trust"]), "--no-watch"]
    monkeypatch.setenv(CRASH_ENV, "renamed")
    server = Server(shelf, *args, log=tmp_path / "first.log")
    with server:
        headers = {"Content-Type": "application/zip", "Authorization": f"Bearer {TOKEN}"}
        with pytest.raises(httpx.HTTPError):  # the process dies: no answer
            httpx.post(f"{server.url}/kos", content=world["archive"].read_bytes(), headers=headers, timeout=60)
        assert server.process.wait(timeout=30) == -signal.SIGKILL
    assert (shelf / "demo-bmi" / "1.0.0").is_dir() and _published_raw(shelf) == []
    monkeypatch.delenv(CRASH_ENV)
    with Server(shelf, *args, log=tmp_path / "second.log") as restarted:
        response = httpx.post(f"{restarted.url}/demo-bmi/1.0.0/bmi", json=GOOD, timeout=30)
        assert response.status_code == 200, response.text
    (entry,) = _published_raw(shelf)
    assert entry["recovered"] is True and entry["signer"] == "curator.pub"
    assert not list((shelf / ".kgrid" / "pending").glob("*"))


def _published_raw(shelf: Path) -> list[dict[str, object]]:
    """Published entries, read without opening a Shelf (which would recover)."""
    return _published(shelf)
