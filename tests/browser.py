"""Helpers for the web catalogue's tests: a shelf with real and hostile KOs, a server, and a real browser.

The browser is the distribution's Chromium (``apt-get install chromium``; ``make test`` installs it
where missing), driven by Playwright with ``executable_path``: Playwright's own browser download
is not used, so the tests run offline. Without Chromium the browser tests skip, which ``make
test`` (``KGRID_NO_SKIP=1``) turns into a failure.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from activator_server import Server
from demo_ko import write_demo_ko

from kgrid_py.curation.build import seal
from kgrid_py.curation.tokens import hash_token

REPO = Path(__file__).resolve().parent.parent
PUBLISH_TOKEN = "ui-test-publish-token"
ADMIN_TOKEN = "ui-test-admin-token"

HOSTILE_CARD = """# Hostile card

<script>window.__pwned = 'script';</script>

<img src="x" onerror="window.__pwned = 'onerror'">

[Click me](javascript:window.__pwned='link')

<a href="javascript:window.__pwned='raw-link'" onclick="window.__pwned='onclick'">raw link</a>

<iframe src="javascript:window.__pwned='iframe'"></iframe>

![image](javascript:window.__pwned='image')

A [safe link](https://doi.org/10.1001/jama.2011.451) stays.
"""


def _retag(path: Path, ko_id: str, version: str, **changes: Any) -> None:
    file = path / "metadata.json"
    raw = json.loads(file.read_text())
    raw.update({"@id": f"{ko_id}/{version}", "dc:identifier": ko_id, "dc:version": version, **changes})
    file.write_text(json.dumps(raw, indent=2))
    seal(path)


def build_ui_shelf(root: Path) -> Path:
    """kfre and both CKD-EPI versions as bundled, a demo KO in three states, and a KO with a hostile card."""
    shelf = root / "shelf"
    for ko, version in (("kfre", "1.0.0"), ("ckd-epi-egfr", "1.0.0"), ("ckd-epi-egfr", "2.0.0")):
        shutil.copytree(REPO / "knowledge_objects" / ko / version, shelf / ko / version)
    template = write_demo_ko(root / "template")
    for version, status, extra in (
        ("1.0.0", "active", {}),
        ("0.9.0", "deprecated", {"successor": "demo-bmi@^1.0.0"}),
        ("0.5.0", "retired", {"successor": "demo-bmi@^1.0.0"}),
    ):
        target = shelf / "demo-bmi" / version
        shutil.copytree(template, target)
        _retag(target, "demo-bmi", version, status=status, **extra)
    hostile = shelf / "hostile-card" / "1.0.0"
    shutil.copytree(template, hostile)
    (hostile / "README.md").write_text(HOSTILE_CARD)
    _retag(hostile, "hostile-card", "1.0.0", **{"dc:title": "Hostile card fixture"})
    return shelf


def write_tokens(root: Path) -> Path:
    tokens = root / "tokens.json"
    entries = [
        {"name": "alice", "roles": ["publish"], "sha256": hash_token(PUBLISH_TOKEN)},
        {"name": "ops", "roles": ["admin"], "sha256": hash_token(ADMIN_TOKEN)},
    ]
    tokens.write_text(json.dumps({"tokens": entries}))
    return tokens


@contextmanager
def ui_server(root: Path) -> Iterator[tuple[Server, Path]]:
    """``kgrid serve`` over a fresh UI shelf, with publish and admin tokens."""
    shelf = build_ui_shelf(root)
    tokens = write_tokens(root)
    with Server(shelf, "--tokens", str(tokens), "--no-watch", log=root / "server.log") as server:
        yield server, shelf


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium on PATH: `make test` installs it (apt-get install chromium)")
    return path


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium from the distribution, through Playwright (no browser download)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
