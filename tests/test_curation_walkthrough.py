"""docs/curating.md's walk-through, run as written: every command of its first ``sh`` block, in order.

The commands run in ``bash`` in a temporary folder (``HOME`` there too, so ``~/.kgrid`` is inside
it), with the installed ``kgrid``; the activator URL becomes a real ``kgrid serve`` whose tokens
come from ``kgrid token``. The ``$EDITOR`` lines become scripted edits: a changed model
coefficient in src/model.py and src/reference.py (so the rebuilt model no longer matches the old
tests.json until ``kgrid vectors regenerate``), then a new version number in metadata.json.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from activator_server import Server

pytest.importorskip("torch")  # `kgrid build` exports the template's torch module

DOC = Path(__file__).resolve().parents[1] / "docs" / "curating.md"
PLACEHOLDER_URL = "https://activator.example.org"


def walkthrough_commands() -> list[tuple[str, str]]:
    """(command, its comment) for each command of the first sh block, continuation lines joined."""
    block = DOC.read_text(encoding="utf-8").split("```sh\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command, _, comment = line.partition("  #")  # a comment follows two spaces or more
        commands.append((command.strip(), comment))
    return commands


def _bash(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _edit(files: list[str], cwd: Path) -> None:
    """What the curator does at each $EDITOR line of the walk-through."""
    if any(f.endswith("src/model.py") for f in files):
        for name in ("src/model.py", "src/reference.py"):
            path = cwd / "my-score" / name
            text = path.read_text()
            assert "'age': 0.05" in text
            path.write_text(text.replace("'age': 0.05", "'age': 0.06"))
        return
    (metadata,) = files
    path = cwd / metadata
    raw = json.loads(path.read_text())
    raw["dc:version"], raw["@id"] = "1.1.0", f"{raw['dc:identifier']}/1.1.0"
    path.write_text(json.dumps(raw, indent=2))


def _new_token(cwd: Path, env: dict[str, str], name: str, role: str) -> tuple[str, dict[str, object]]:
    out = _bash(f"kgrid token --name {name} --role {role}", cwd, env)
    assert out.returncode == 0, out.stderr
    token = re.search(r"^token: (\S+)$", out.stdout, re.M)
    entry = re.search(r"^tokens\.json entry: (\{.*\})$", out.stdout, re.M)
    assert token and entry, out.stdout
    return token.group(1), json.loads(entry.group(1))


def test_the_curating_walkthrough_runs_as_written(tmp_path: Path) -> None:
    commands = walkthrough_commands()
    assert any(c.startswith("kgrid vectors regenerate") for c, _ in commands)
    assert any(c.startswith("mkdir -p trusted-keys") for c, _ in commands)
    cwd = tmp_path / "work"
    (cwd / "home").mkdir(parents=True)
    env = {**os.environ, "HOME": str(cwd / "home"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("KGRID_TOKEN", None)
    env.pop("KGRID_SHELF", None)
    publish_token, publish_entry = _new_token(cwd, env, "dr-curator", "publish")
    admin_token, admin_entry = _new_token(cwd, env, "ops", "admin")
    (tmp_path / "tokens.json").write_text(json.dumps({"tokens": [publish_entry, admin_entry]}))
    (tmp_path / "served").mkdir()
    server: Server | None = None
    ran: list[str] = []
    try:
        for command, comment in commands:
            if command.startswith("$EDITOR "):
                _edit(command.split()[1:], cwd)
                continue
            if command.startswith("export KGRID_TOKEN="):
                env["KGRID_TOKEN"] = admin_token if "admin" in comment else publish_token
                continue
            if PLACEHOLDER_URL in command:
                if server is None:
                    args = ["--tokens", str(tmp_path / "tokens.json"), "--require-signature"]
                    args += ["--trust", str(cwd / "trusted-keys"), "--no-watch"]
                    server = Server(tmp_path / "served", *args, log=tmp_path / "server.log")
                    server.wait_ready()
                command = command.replace(PLACEHOLDER_URL, server.url)
            result = _bash(command, cwd, env)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            ran.append(command)
            if command == "kgrid build my-score":
                # the rebuilt model no longer matches the old expected values: this is what regenerate is for
                stale = _bash("kgrid validate my-score", cwd, env)
                assert stale.returncode == 1 and "FAIL" in stale.stderr
            if command.startswith("curl"):
                assert 0 < json.loads(result.stdout)["result"]["risk"] < 1
            if command.startswith("kgrid status my-score@1.0.0 --to"):
                assert result.stdout.startswith("my-score@1.0.0: retired") and "my-score@1.1.0" in result.stdout
        assert server is not None
        assert publish_token not in server.read_log() and admin_token not in server.read_log()
    finally:
        if server is not None:
            server.stop()
    assert "kgrid verify my-score-1.0.0.zip --trust trusted-keys/" in ran
