"""The web catalogue in a real browser (the distribution's Chromium via Playwright) against ``kgrid serve``.

Browse, search, open a card, try KFRE with a unit change and get exactly the API's numbers, see a
field error, use it by keyboard alone, read a hostile card that does nothing, pass axe-core, and fit
a phone. ``KGRID_UI_SCREENSHOTS=1`` also saves the main pages to docs/screenshots/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import REPO, chromium, ui_server

KFRE_TRY = "/ui/kos/kfre/1.0.0/try/four-variable"
KFRE_API = "/endpoints/kfre/four-variable?v=1.0.0"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    root = tmp_path_factory.mktemp("ui-browser")
    with ui_server(root) as (server, _), chromium() as browser:
        yield server.url, browser


@pytest.fixture
def page(world: tuple[str, Any]) -> Iterator[Any]:
    """A fresh page; any console error (a CSP violation, a missing file) fails the test, except the
    browser's own note of a 422 answer, which the field-error tests ask for."""
    url, browser = world
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error" and "status of 422" not in message.text:
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], errors


def api(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + KFRE_API, json=body, timeout=30)


def test_browse_search_and_open_a_card(page: Any) -> None:
    page.goto("/ui/")
    assert page.locator("li.ko").count() == 4
    page.fill("#q", "kidney failure")
    page.press("#q", "Enter")
    page.wait_for_url("**/ui/?q=kidney+failure*")
    assert page.locator("li.ko").count() == 1
    page.click("li.ko h2 a")
    page.wait_for_url("**/ui/kos/kfre/1.0.0")
    assert "Kidney Failure Risk Equation" in page.inner_text("h1")
    assert page.locator("#card .card-body h1, #card .card-body h2").count() >= 1
    assert page.locator('#citations a[href^="https://doi.org/10.1001/jama.2011.451"]').count() == 1


def test_status_filter_and_keyword_chip(page: Any) -> None:
    page.goto("/ui/")
    page.select_option("#status", "retired")
    page.click("form.filters button")
    page.wait_for_url("**status=retired*")
    assert page.locator("li.ko").evaluate_all("rows => rows.map(r => r.dataset.ko)") == ["demo-bmi"]
    page.goto("/ui/")
    page.click('li.ko[data-ko="kfre"] .keywords a:text("nephrology referral")')
    assert page.locator("li.ko").evaluate_all("rows => rows.map(r => r.dataset.ko)") == ["kfre"]


def _fill_kfre(page: Any, age: str, uacr: str, unit: str) -> None:
    page.fill("#in-age", age)
    page.select_option("#in-sex", "female")
    page.fill("#in-egfr", "45")
    page.fill("#in-uacr", uacr)
    page.select_option("#unit-uacr", unit)


def test_kfre_with_a_unit_change_gives_exactly_the_api_result(page: Any, world: tuple[str, Any]) -> None:
    url, _ = world
    page.goto(KFRE_TRY)
    _fill_kfre(page, "63", "3.4", "mg/mmol")
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#result:not([hidden])")
    expected = api(url, {"age": 63, "sex": "female", "egfr": 45, "uacr": {"value": 3.4, "unit": "mg/mmol"}}).json()
    for name, value in expected["result"].items():
        shown = page.get_attribute(f'data[data-output="{name}"]', "value")
        assert float(shown) == value, name  # the same double, not merely close
    headline = page.inner_text("#result-table tbody tr:nth-child(2) .headline")
    percent = expected["result"]["risk_5y"] * 100
    assert headline == (f"{percent:.2f} %" if percent < 1 else f"{percent:.1f} %")
    shown_warnings = page.locator("#result-warnings li").all_inner_texts()
    assert shown_warnings == (expected["info"]["warnings"] or ["None."])
    # the unit change mattered: the same number in mg/g is another answer
    in_mg_g = api(url, {"age": 63, "sex": "female", "egfr": 45, "uacr": 3.4}).json()["result"]["risk_5y"]
    assert in_mg_g != expected["result"]["risk_5y"]


def test_kfre_above_the_referral_threshold_says_so(page: Any, world: tuple[str, Any]) -> None:
    url, _ = world
    page.goto(KFRE_TRY)
    _fill_kfre(page, "55", "150", "mg/mmol")
    page.fill("#in-egfr", "18")
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#result:not([hidden])")
    risk = api(url, {"age": 55, "sex": "female", "egfr": 18, "uacr": {"value": 150, "unit": "mg/mmol"}}).json()
    assert risk["result"]["risk_5y"] >= 0.05
    assert "critical threshold of 5.0 %" in page.inner_text("#result-table")


def test_a_field_error_is_shown_next_to_its_field(page: Any, world: tuple[str, Any]) -> None:
    url, _ = world
    page.goto(KFRE_TRY)
    _fill_kfre(page, "12", "30", "mg/g")
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#err-age:not([hidden])")
    problem = api(url, {"age": 12, "sex": "female", "egfr": 45, "uacr": 30}).json()
    message = next(e["message"] for e in problem["errors"] if e["field"] == "age")
    assert page.inner_text("#err-age") == message
    assert page.get_attribute("#in-age", "aria-invalid") == "true"
    assert page.is_hidden("#err-egfr") and page.is_hidden("#result")
    assert page.evaluate("document.activeElement.id") == "error-summary"
    page.click("#error-list a")  # the summary links to the field
    assert page.evaluate("document.activeElement.id") == "in-age"


def test_keyboard_only(page: Any, world: tuple[str, Any]) -> None:
    url, _ = world
    page.goto(KFRE_TRY)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    order = []
    for _ in range(12):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none", f"no visible focus on {order[-1]}"
        if order[-1] == "BUTTON":
            break
    inputs = [o for o in order if o.startswith(("in-", "unit-")) or o == "BUTTON"]
    assert inputs == ["in-age", "in-sex", "in-egfr", "in-uacr", "unit-uacr", "in-region", "BUTTON"]
    for field, keys in (("in-age", "63"), ("in-egfr", "45"), ("in-uacr", "30")):
        page.focus(f"#{field}")
        page.keyboard.type(keys)
    page.focus("#in-sex")
    page.keyboard.press("ArrowDown")  # Choose… -> female
    page.focus("#in-uacr")
    page.keyboard.press("Enter")  # submits the form
    page.wait_for_selector("#result:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "result"
    expected = api(url, {"age": 63, "sex": "female", "egfr": 45, "uacr": 30}).json()["result"]
    assert float(page.get_attribute('data[data-output="risk_2y"]', "value")) == expected["risk_2y"]


def test_a_hostile_model_card_does_nothing(page: Any) -> None:
    page.goto("/ui/kos/hostile-card/1.0.0")
    card = page.locator("#card .card-body")
    assert "Hostile card" in card.inner_text()
    assert card.locator("script, iframe, [onerror], [onclick]").count() == 0
    hrefs = card.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert hrefs == ["https://doi.org/10.001/jama.2011.451".replace("10.001", "10.1001")]
    for link in card.locator("a").all():  # following what is left must not run anything either
        link.click(modifiers=["Alt"], no_wait_after=True)
    page.mouse.click(5, 5)
    assert page.evaluate("window.__pwned === undefined")


@pytest.mark.parametrize("path", ["/ui/", "/ui/kos/kfre/1.0.0", KFRE_TRY, "/ui/curate", "/ui/kos/demo-bmi/0.5.0"])
def test_axe_core_finds_no_violations(page: Any, path: str) -> None:
    axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")
    page.goto(path)
    results = axe_module.Axe().run(page)
    violations = [(v["id"], len(v["nodes"])) for v in results.response["violations"]]
    assert violations == [], results.generate_report()
    passed = {rule["id"] for rule in results.response["passes"]}
    assert {"color-contrast", "label", "document-title", "html-has-lang"} & passed  # axe really ran its rules


def test_axe_core_after_a_field_error(page: Any) -> None:
    axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")
    page.goto(KFRE_TRY)
    _fill_kfre(page, "12", "30", "mg/g")
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#err-age:not([hidden])")
    results = axe_module.Axe().run(page)
    assert results.response["violations"] == [], results.generate_report()


@pytest.mark.parametrize("path", ["/ui/", "/ui/kos/kfre/1.0.0", KFRE_TRY, "/ui/curate"])
def test_fits_a_phone(world: tuple[str, Any], path: str) -> None:
    url, browser = world
    context = browser.new_context(base_url=url, viewport={"width": 360, "height": 740}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{path} scrolls sideways on a phone ({width} px)"
    finally:
        context.close()


def test_screenshots(world: tuple[str, Any], tmp_path: Path) -> None:
    """The main pages, saved for the README when KGRID_UI_SCREENSHOTS=1 (else to a temporary folder)."""
    url, browser = world
    out = REPO / "docs" / "screenshots" if os.environ.get("KGRID_UI_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    shots = [
        ("catalogue.png", "/ui/", 1280, None),
        ("version.png", "/ui/kos/kfre/1.0.0", 1280, None),
        ("try-result.png", KFRE_TRY, 1280, "result"),
        ("try-error.png", KFRE_TRY, 1280, "error"),
        ("curate.png", "/ui/curate", 1280, None),
        ("phone-try.png", KFRE_TRY, 390, "result"),
    ]
    for name, path, width, action in shots:
        context = browser.new_context(base_url=url, viewport={"width": width, "height": 900})
        try:
            page = context.new_page()
            page.goto(path)
            if action:
                _fill_kfre(page, "12" if action == "error" else "63", "3.4", "mg/mmol")
                page.click("#try-form button[type=submit]")
                page.wait_for_selector("#result:not([hidden])" if action == "result" else "#err-age:not([hidden])")
            page.screenshot(path=str(out / name), full_page=name != "version.png")
        finally:
            context.close()
        assert (out / name).stat().st_size > 10_000
