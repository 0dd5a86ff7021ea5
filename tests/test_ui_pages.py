"""The web catalogue over HTTP against ``kgrid serve``: pages, headers, redirects, downloads and curator actions."""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from collections.abc import Iterator
from html import escape as html_escape
from pathlib import Path

import httpx
import pytest
from browser import ADMIN_TOKEN, PUBLISH_TOKEN, REPO, _retag, ui_server
from demo_ko import write_demo_ko

from activator.markdown import render_markdown
from activator.routes.ui import CSP
from kgrid_py.curation.archive import inspect, pack
from kgrid_py.curation.audit import read_audit


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path, Path]]:
    root = tmp_path_factory.mktemp("ui-pages")
    with ui_server(root) as (server, shelf), httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, shelf, root


PAGES = [
    "/ui/",
    "/ui/?q=kidney",
    "/ui/?status=retired",
    "/ui/kos/kfre/1.0.0",
    "/ui/kos/kfre/1.0.0/try/four-variable",
    "/ui/kos/demo-bmi/0.5.0",
    "/ui/curate",
    "/ui/kos/kfre/1.0.0/monitor/four-variable",
    "/ui/no-such-page",
    "/ui/kos/nope/1.0.0",
]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_the_csp_and_no_inline_script(world, path: str) -> None:
    client, _, _ = world
    response = client.get(path)
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    for tag in re.findall(r"<script\b[^>]*>(.*?)</script>", response.text, re.S):
        assert tag.strip() == "", f"inline script on {path}"
    assert " style=" not in response.text and "<style" not in response.text
    assert not re.search(r"\son[a-z]+=", response.text), f"an event handler attribute on {path}"


@pytest.mark.parametrize(
    ("path", "status"), [("/ui/no-such-page", 404), ("/ui/kos/nope/1.0.0", 404), ("/ui/?status=bogus", 400)]
)
def test_errors_are_html_pages_with_their_status(world, path: str, status: int) -> None:
    client, _, _ = world
    response = client.get(path)
    assert response.status_code == status
    assert "<h1>" in response.text and 'role="alert"' in response.text


def test_monitoring_without_capture_says_how_to_turn_it_on(world) -> None:
    client, _, _ = world
    response = client.get("/ui/kos/kfre/1.0.0/monitor/four-variable")
    assert response.status_code == 200
    assert 'id="capture-off"' in response.text and "kgrid serve SHELF --capture" in response.text
    assert "<img" not in response.text and "Site " not in response.text
    assert client.get("/ui/kos/kfre/1.0.0/monitor/four-variable/volume.png?site=x").status_code == 404
    assert client.get("/ui/kos/demo-bmi/0.5.0/monitor/bmi").status_code == 200  # a retired version too


def test_root_redirects_browsers_and_keeps_json_for_api_clients(world) -> None:
    client, _, _ = world
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    redirect = client.get("/", headers={"Accept": browser_accept})
    assert redirect.status_code == 303 and redirect.headers["location"] == "/ui/"
    for accept in (None, "*/*", "application/json", "text/html;q=0"):
        headers = {"Accept": accept} if accept else {}
        response = client.get("/", headers=headers)
        assert response.status_code == 200, accept
        assert response.json()["links"]["kos"] == "/kos", accept


def _listed(html: str) -> list[str]:
    return re.findall(r'<li class="ko" data-ko="([^"]+)"', html)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("", ["ckd-epi-egfr", "demo-bmi", "hostile-card", "kfre"], id="all"),
        pytest.param("?q=kidney+failure", ["kfre"], id="search-words"),
        pytest.param("?q=KFRE", ["kfre"], id="search-case"),
        pytest.param("?keyword=nephrology+referral", ["kfre"], id="keyword"),
        pytest.param("?status=retired", ["demo-bmi"], id="retired"),
        pytest.param("?status=deprecated", ["demo-bmi"], id="deprecated"),
        pytest.param("?q=zzz-nothing", [], id="nothing"),
    ],
)
def test_catalogue_search_and_filters(world, query: str, expected: list[str]) -> None:
    client, _, _ = world
    assert _listed(client.get("/ui/" + query).text) == expected


def test_catalogue_row_shows_latest_version_count_and_status(world) -> None:
    client, _, _ = world
    html = client.get("/ui/?q=ckd-epi").text
    row = html[html.index('data-ko="ckd-epi-egfr"') :]
    assert "latest <strong>2.0.0</strong> · 2 versions" in row
    demo = client.get("/ui/?q=demo").text
    assert re.search(r"1\.0\.0</a> <span class=\"badge badge-active\">", demo)
    assert re.search(r"0\.5\.0</a> <span class=\"badge badge-retired\">", demo)


def test_version_page_shows_card_citations_inputs_lifecycle_and_digest(world) -> None:
    client, shelf, _ = world
    html = client.get("/ui/kos/kfre/1.0.0").text
    metadata = json.loads((shelf / "kfre" / "1.0.0" / "metadata.json").read_text())
    for citation in metadata["citations"]:
        assert f'href="https://doi.org/{citation["doi"]}"' in html
    assert html_escape(metadata["intended_population"], quote=False) in html
    assert "<code>mg/g</code>, <code>mg/mmol</code>" in html  # uacr: the unit and the accepted one
    identity = client.get("/kos/kfre/1.0.0").json()["content_digest"]
    assert identity in html
    assert "No publication record" in html
    card = (shelf / "kfre" / "1.0.0" / "README.md").read_text().splitlines()[0].lstrip("# ").strip()
    assert card in html


def test_retired_version_page_names_its_successor_and_offers_no_try(world) -> None:
    client, _, _ = world
    html = client.get("/ui/kos/demo-bmi/0.5.0").text
    assert "retired and no longer runs" in html and "demo-bmi@^1.0.0" in html
    assert "/try/" not in html
    assert client.get("/ui/kos/demo-bmi/0.5.0/try/bmi").status_code == 410


def test_archive_download_is_the_packed_version(world) -> None:
    client, shelf, _ = world
    response = client.get("/ui/kos/kfre/1.0.0/archive.zip")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert response.content == pack(shelf / "kfre" / "1.0.0")
    assert inspect(response.content).manifest_digest == client.get("/kos/kfre/1.0.0").json()["content_digest"]


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        '<a href="javascript:alert(1)" onclick="alert(1)">x</a>',
        "![x](javascript:alert(1))",
        '<iframe src="https://example.org"></iframe>',
        "<svg onload=alert(1)>",
    ],
)
def test_markdown_never_lets_script_through(hostile: str) -> None:
    html = render_markdown(f"# Card\n\n{hostile}\n")
    assert "<script" not in html and "<iframe" not in html and "<svg" not in html
    assert not re.search(r"<[^>]+\son\w+=", html)
    assert not re.search(r"""<[a-z]+[^<>]*\s(href|src)=["']?\s*(javascript|vbscript|data):""", html, re.I)


def test_markdown_keeps_ordinary_card_content() -> None:
    html = render_markdown("# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[doi](https://doi.org/10.1/x) **bold**\n")
    assert "<h1>Title</h1>" in html and "<table>" in html and "<strong>bold</strong>" in html
    assert '<a href="https://doi.org/10.1/x" rel="noopener noreferrer nofollow">doi</a>' in html


# -- curator actions -------------------------------------------------------------------------------------


def _archive(root: Path, version: str) -> bytes:
    folder = root / f"new-{version}"
    shutil.copytree(write_demo_ko(root / f"tpl-{version}"), folder)
    _retag(folder, "demo-bmi", version, status="active")
    return pack(folder)


def _pending(html: str) -> str:
    match = re.search(r'name="pending" value="([0-9a-f]{32})"', html)
    assert match, html[-2000:]
    return match.group(1)


def test_publish_is_previewed_then_confirmed_and_audited(world) -> None:
    client, shelf, root = world
    data = _archive(root, "1.1.0")
    files = {"archive": ("demo.zip", data, "application/zip")}
    preview = client.post("/ui/curate/publish", data={"token": PUBLISH_TOKEN}, files=files)
    assert preview.status_code == 200, preview.text[-1500:]
    assert "Publish demo-bmi 1.1.0?" in preview.text and inspect(data).manifest_digest in preview.text
    assert client.get("/kos/demo-bmi/1.1.0").status_code == 404  # nothing published by the preview
    pending = _pending(preview.text)
    unconfirmed = client.post("/ui/curate/publish/confirm", data={"token": PUBLISH_TOKEN, "pending": pending})
    assert unconfirmed.status_code == 400
    done = client.post(
        "/ui/curate/publish/confirm", data={"token": PUBLISH_TOKEN, "pending": pending, "confirm": "yes"}
    )
    assert done.status_code == 200 and "demo-bmi@1.1.0 is on the shelf as active" in done.text
    assert client.get("/kos/demo-bmi/1.1.0").json()["status"] == "active"
    again = client.post(
        "/ui/curate/publish/confirm", data={"token": PUBLISH_TOKEN, "pending": pending, "confirm": "yes"}
    )
    assert again.status_code == 410  # a pending upload is taken once
    entries = read_audit(shelf / ".kgrid" / "audit.jsonl")
    assert any(e["action"] == "publish" and e.get("ref") == "demo-bmi@1.1.0" and e["actor"] == "alice" for e in entries)


@pytest.mark.parametrize(
    ("token", "status"),
    [
        pytest.param("", 401, id="none"),
        pytest.param("wrong", 401, id="unknown"),
        pytest.param(ADMIN_TOKEN, 403, id="admin-not-publish"),
    ],
)
def test_publish_without_the_publish_role_is_refused_and_audited(world, token: str, status: int) -> None:
    client, shelf, _ = world
    files = {"archive": ("demo.zip", b"PK not really", "application/zip")}
    response = client.post("/ui/curate/publish", data={"token": token}, files=files)
    assert response.status_code == status
    assert "text/html" in response.headers["content-type"]
    assert not token or token not in response.text  # a token is never echoed
    last = read_audit(shelf / ".kgrid" / "audit.jsonl")[-1]
    assert last["action"] == "authorize" and last["http_status"] == status and "catalogue form" in last["reason"]


def test_a_bad_archive_is_refused_at_preview_with_the_reason(world) -> None:
    client, _, _ = world
    files = {"archive": ("x.zip", b"not a zip at all", "application/zip")}
    response = client.post("/ui/curate/publish", data={"token": PUBLISH_TOKEN}, files=files)
    assert response.status_code in (413, 422) and "cannot be published" in response.text


def test_status_change_is_previewed_confirmed_and_audited(world) -> None:
    client, shelf, _ = world
    form = {"ref": "demo-bmi@0.9.0", "status": "retired", "successor": "demo-bmi@^1.0.0", "sunset": ""}
    preview = client.post("/ui/curate/status", data=form)
    assert preview.status_code == 200 and "Set demo-bmi 0.9.0 to retired?" in preview.text
    assert "Retiring is final" in preview.text
    assert client.get("/kos/demo-bmi/0.9.0/status").json()["status"] == "deprecated"  # not yet
    forbidden = client.post("/ui/curate/status/confirm", data={**form, "token": PUBLISH_TOKEN, "confirm": "yes"})
    assert forbidden.status_code == 403
    done = client.post("/ui/curate/status/confirm", data={**form, "token": ADMIN_TOKEN, "confirm": "yes"})
    assert done.status_code == 200 and "was deprecated and is now retired" in done.text
    assert client.get("/kos/demo-bmi/0.9.0/status").json()["status"] == "retired"
    assert client.post("/endpoints/demo-bmi/bmi?v=0.9.0", json={}).status_code == 410
    last = [e for e in read_audit(shelf / ".kgrid" / "audit.jsonl") if e["action"] != "authorize"][-1]
    assert last["actor"] == "ops" and last.get("ref") == "demo-bmi@0.9.0"


@pytest.mark.parametrize(
    ("form", "fragment"),
    [
        pytest.param({"ref": "demo-bmi@1", "status": "retired"}, "not an exact KO version", id="range"),
        pytest.param({"ref": "demo-bmi@1.0.0", "status": "gone"}, "must be one of", id="status"),
        pytest.param({"ref": "demo-bmi@1.0.0", "status": "deprecated", "sunset": "soon"}, "ISO", id="sunset"),
        pytest.param({"ref": "nope@1.0.0", "status": "retired"}, "no KO version", id="unknown"),
    ],
)
def test_status_preview_refuses_bad_requests_by_name(world, form: dict[str, str], fragment: str) -> None:
    client, _, _ = world
    response = client.post("/ui/curate/status", data=form)
    assert 400 <= response.status_code < 500 and fragment in response.text


def test_kfre_card_on_the_repository_shelf_renders(tmp_path: Path) -> None:
    text = (REPO / "knowledge_objects" / "kfre" / "1.0.0" / "README.md").read_text()
    html = render_markdown(text)
    assert "<h1>" in html or "<h2>" in html


def test_archive_download_unpacks_to_the_listed_files(world) -> None:
    client, shelf, _ = world
    data = client.get("/ui/kos/demo-bmi/1.0.0/archive.zip").content
    names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    listed = {f["path"] for f in json.loads((shelf / "demo-bmi" / "1.0.0" / "metadata.json").read_text())["files"]}
    assert listed <= names
