"""The catalogue's monitoring pages against a real ``kgrid serve --capture`` (SQLite store), over HTTP and in Chromium.

Calls are made through the API (one request per patient, ``X-Subject-Id``) by two servers on one
store, sites ``north`` (400 patients whose true risk is twice KFRE's, so O:E alerts) and ``small``
(15 patients, too few events for any metric). Outcomes are simulated from the API's own answers
(:func:`kgrid_py.learning.cohort.simulate_times`) and imported with
:func:`kgrid_py.learning.outcomes.import_rows`. The page's numbers are checked against
``monitor()`` run here on the same store, and its counts against the calls this test made.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from activator_server import Server
from browser import REPO, build_ui_shelf, chromium, write_tokens

from activator.monitoring import default_since
from activator.routes.ui import CSP
from kgrid_py.ko import read_metadata
from kgrid_py.learning.cohort import Site, simulate_times
from kgrid_py.learning.monitor import monitor
from kgrid_py.learning.outcomes import OutcomeRow, import_rows
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer

PAGE = "/ui/kos/kfre/1.0.0/monitor/four-variable"
API = "/endpoints/kfre/four-variable?v=1.0.0"
SECRET = secrets.token_hex(32)


def _seed_site(server: Server, site: Site, rng: np.random.Generator) -> tuple[list[OutcomeRow], dict[str, int]]:
    """One call per patient through the API, plus refused calls (age 12); outcomes simulated from the answers."""
    tally = {"calls": 0, "refused": 0, "warned": 0}
    rows: list[OutcomeRow] = []
    today = dt.datetime.now(dt.UTC).date()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(site.n):
            body = {
                "age": int(rng.integers(40, 90)),
                "sex": "male" if rng.uniform() < 0.55 else "female",
                "egfr": int(rng.integers(12, 59)),
                "uacr": float(np.round(np.exp(rng.normal(5.0, 1.6)), 1)),
            }
            patient = f"{site.name}-patient-{i:04d}"
            answer = client.post(API, json=body, headers={"X-Subject-Id": patient})
            assert answer.status_code == 200, answer.text
            tally["calls"] += 1
            tally["warned"] += bool(answer.json()["info"]["warnings"])
            risk_5y = np.array([answer.json()["result"]["risk_5y"]])
            years, cause = simulate_times(rng, risk_5y, site)
            end = (today + dt.timedelta(days=max(1, int(np.ceil(years[0] * 365.25))))).isoformat()
            rows.append(
                OutcomeRow(
                    row=i + 1,
                    patient_id=patient,
                    event=int(cause[0] == 1),
                    event_date=end if cause[0] == 1 else None,
                    followup_date=end,
                    competing_event=int(cause[0] == 2),
                    competing_date=end if cause[0] == 2 else None,
                )
            )
        for _ in range(site.n // 20 + 1):
            refused = client.post(API, json={"age": 12, "sex": "female", "egfr": 45, "uacr": 30})
            assert refused.status_code == 422
            tally["calls"] += 1
            tally["refused"] += 1
    return rows, tally


def _serve(shelf: Path, root: Path, url: str, site: str) -> Server:
    secret = root / "subject.secret"
    secret.write_text(SECRET + "\n")
    args = ["--tokens", str(write_tokens(root)), "--no-watch", "--no-access-log", "--capture", url, "--site", site]
    return Server(shelf, *args, "--subject-secret-file", str(secret), log=root / f"server-{site}.log")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ui-monitor")
    shelf = build_ui_shelf(root)
    url = f"sqlite:///{root / 'capture.sqlite3'}"
    rng = np.random.default_rng(16)
    tallies = {}
    with _serve(shelf, root, url, "small") as small:
        small_rows, tallies["small"] = _seed_site(small, Site("small", 15), rng)
    with _serve(shelf, root, url, "north") as server:
        north_rows, tallies["north"] = _seed_site(server, Site("north", 400, risk_ratio=2.0), rng)
        store = CaptureStore.open(url)
        keyer = SubjectKeyer(SECRET)
        for site, rows in (("north", north_rows), ("small", small_rows)):
            report = import_rows(store, rows, site=site, outcome="kidney_failure", keyer=keyer, source="test")
            assert report.inserted == len(rows), report
        yield {"url": server.url, "store": store, "shelf": shelf, "tallies": tallies}
        store.close()


@pytest.fixture(scope="module")
def expected(world: dict[str, Any]) -> dict[str, Any]:
    """monitor() run here on the same store and window as the page's default."""
    _, metadata = read_metadata(world["shelf"] / "kfre" / "1.0.0")
    function = next(f for f in metadata.functions if f.name == "four-variable")
    return monitor(world["store"], "kfre", "1.0.0", function, since=default_since(function))


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_page_shows_volume_rates_metrics_and_alerts_of_every_site(world, expected) -> None:
    response = httpx.get(world["url"] + PAGE, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-security-policy"] == CSP
    html, text = response.text, _text(response.text)
    assert "<style" not in html and " style=" not in html and "data:" not in html
    assert not re.search(r"<script\b[^>]*>\s*\S", html)
    for site in ("north", "small"):
        tally = world["tallies"][site]
        assert f"Site {site}" in text
        section = next(s for s in expected["sites"] if s["site"] == site)
        assert (section["calls"], section["refused"], section["warned"]) == (
            tally["calls"],
            tally["refused"],
            tally["warned"],
        )
        assert f"Refused {tally['refused']} ({100 * tally['refused'] / tally['calls']:.1f}%)" in text
        assert f"With warnings {tally['warned']} ({100 * tally['warned'] / tally['calls']:.1f}%)" in text
    north = next(s for s in expected["sites"] if s["site"] == "north")
    for perf in north["performance"]:
        oe = perf["observed_expected"]
        assert "value" in oe, perf  # 400 patients, true risk twice the predicted: enough events
        assert f"{oe['value']:.3f}" in text and f"{oe['ci95'][0]:.3f} to {oe['ci95'][1]:.3f}" in text
        for key in ("calibration_slope", "c_index"):
            assert f"{perf[key]['value']:.3f}" in text
    assert expected["alerts"], "the doubled risk should leave KFRE's declared O:E range"
    assert all(a["site"] == "north" for a in expected["alerts"])
    alerts = re.search(r'<section id="alerts".*?</section>', html, re.S).group(0)
    assert 'role="alert"' in alerts
    for alert in expected["alerts"]:
        assert f"{alert['value']:.3f}" in _text(alerts)
    assert html.count('<tr class="alert">') == len(expected["alerts"])
    small = next(s for s in expected["sites"] if s["site"] == "small")
    assert all(p["observed_expected"] == {"status": "insufficient data"} for p in small["performance"])
    assert "insufficient data" in text


def test_the_page_never_shows_subject_keys_or_patient_ids(world) -> None:
    html = httpx.get(world["url"] + PAGE, timeout=60).text
    keys = [k for k in world["store"].calls_table(columns=["subject_key"]).column("subject_key").to_pylist() if k]
    assert len(keys) > 400
    assert not any(key in html for key in keys)
    assert "patient-" not in html


def test_the_plots_are_pngs_served_by_their_own_routes(world, expected) -> None:
    html = httpx.get(world["url"] + PAGE, timeout=60).text
    sources = [s.replace("&amp;", "&") for s in re.findall(r'<img[^>]+src="([^"]+)"', html)]
    calibration = [s for s in sources if "/calibration.png?" in s]
    volume = [s for s in sources if "/volume.png?" in s]
    with_curve = sum(1 for s in expected["sites"] for p in s["performance"] if p.get("curve"))
    assert len(volume) == 2 and len(calibration) == with_curve >= 2
    for src in calibration + volume:
        assert src.startswith("/ui/kos/kfre/1.0.0/monitor/four-variable/")
        image = httpx.get(world["url"] + src, timeout=60)
        assert image.status_code == 200, (src, image.text[:300])
        assert image.headers["content-type"] == "image/png"
        assert image.content.startswith(b"\x89PNG\r\n\x1a\n") and len(image.content) > 5_000
    for bad, status in (
        ("/calibration.png?site=north&horizon=nope", 404),
        ("/calibration.png?site=nowhere&horizon=risk_5y", 404),
        ("/calibration.png?horizon=risk_5y", 400),
        ("/volume.png?site=" + "x" * 500, 400),
    ):
        answer = httpx.get(world["url"] + PAGE + bad, timeout=30)
        assert answer.status_code == status, bad
        assert answer.headers["content-type"].startswith("text/html")


def test_bad_requests_get_an_html_4xx(world) -> None:
    future = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()
    for path, status in (
        (PAGE + "?since=yesterday", 400),
        (PAGE + f"?since={future}", 400),
        (PAGE + "?since=1900-01-01", 400),
        (PAGE + "?since=" + "9" * 5000, 400),
        ("/ui/kos/kfre/1.0.0/monitor/no-such-function", 404),
        ("/ui/kos/kfre/9.9.9/monitor/four-variable", 404),
    ):
        answer = httpx.get(world["url"] + path, timeout=30)
        assert answer.status_code == status, path
        assert 'role="alert"' in answer.text and answer.headers["content-security-policy"] == CSP


def test_monitor_redirects_to_the_first_function_and_the_version_page_links_it(world) -> None:
    answer = httpx.get(world["url"] + "/ui/kos/kfre/1.0.0/monitor?since=2025-01-01", timeout=30)
    assert answer.status_code == 303
    assert answer.headers["location"] == PAGE + "?since=2025-01-01"
    version = httpx.get(world["url"] + "/ui/kos/kfre/1.0.0", timeout=30).text
    assert f'href="{PAGE}"' in version and 'href="/ui/kos/kfre/1.0.0/monitor/eight-variable"' in version


def test_reports_are_cached_per_window_and_a_new_window_sees_new_calls(world) -> None:
    url = world["url"]
    since = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=30)).isoformat()

    def north_calls() -> int:
        text = _text(httpx.get(f"{url}{PAGE}?since={since}", timeout=60).text)
        return int(re.search(r"Site north Calls (\d+) ", text).group(1))

    before = north_calls()
    body = {"age": 70, "sex": "male", "egfr": 30, "uacr": 100}
    assert httpx.post(url + API, json=body, headers={"X-Subject-Id": "late-patient"}, timeout=30).status_code == 200
    assert north_calls() == before  # served from the cache (TTL 60 s)
    since = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=31)).isoformat()
    assert north_calls() == before + 1  # another window is computed afresh and sees the new call


# -- in a browser ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


def _open(browser: Any, url: str, width: int) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(base_url=url, viewport={"width": width, "height": 900}, is_mobile=width < 500)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(PAGE)
    page.wait_for_load_state("networkidle")
    return context, page, errors


def test_in_a_browser_axe_finds_nothing_the_plots_load_and_it_fits_a_phone(world, browser) -> None:
    axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")
    for width in (1280, 360):
        context, page, errors = _open(browser, world["url"], width)
        try:
            loaded = page.locator("img.plot").evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
            assert loaded and all(loaded), loaded
            results = axe_module.Axe().run(page)
            assert results.response["violations"] == [], results.generate_report()
            wide = page.evaluate(
                "w => [...document.querySelectorAll('body *')]"
                ".filter(e => e.getBoundingClientRect().right > w && !e.closest('.scroll'))"
                ".map(e => e.tagName + '.' + e.className).slice(0, 8)",
                width,
            )
            assert page.evaluate("document.documentElement.scrollWidth") <= width, wide
            assert errors == [], errors
        finally:
            context.close()


def test_in_a_browser_the_window_form_works_by_keyboard(world, browser) -> None:
    context, page, errors = _open(browser, world["url"], 1280)
    try:
        since = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=7)).isoformat()
        page.focus("#since")
        page.keyboard.press("Control+A")
        page.keyboard.type(since)
        page.keyboard.press("Enter")
        page.wait_for_url(f"**/monitor/four-variable?since={since}")
        assert page.locator("#since").input_value() == since
        assert page.locator("h2", has_text="Site north").count() == 1
        assert errors == [], errors
    finally:
        context.close()


def test_screenshot(world, browser, tmp_path: Path) -> None:
    """docs/screenshots/monitor.png when KGRID_UI_SCREENSHOTS=1 (else a temporary folder)."""
    out = REPO / "docs" / "screenshots" if os.environ.get("KGRID_UI_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    context, page, _ = _open(browser, world["url"], 1280)
    try:
        page.screenshot(path=str(out / "monitor.png"), full_page=True)
    finally:
        context.close()
    assert (out / "monitor.png").stat().st_size > 10_000
