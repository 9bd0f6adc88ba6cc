"""The dashboard in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by selenium against a spawned `edge serve` and the mock upstream.

Each step a person takes is proved here: logging in, watching numbers move as the openai
SDK sends traffic, making a key whose secret is shown once and works, revoking it and
seeing the SDK refused, exporting usage as CSV that matches /admin/usage, a hostile key
name staying text, both widths without horizontal scrolling, and a console free of
errors. Screenshots of every view land in the test's tmp dir (and in `EDGE_UI_DOCS`,
e.g. `docs/`, when that is set: how the README's pictures are made).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from _servers import EdgeProcess, MockUpstream
from test_ui_api import ADMIN, PROVIDER_KEY, chat, edge_args

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="needs Debian's chromium and chromium-driver")
WAIT_S = 30.0
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory,
         mock_upstream: MockUpstream) -> Iterator[EdgeProcess]:
    proc = EdgeProcess(tmp_path_factory.mktemp("edge"), **edge_args(mock_upstream))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def team(edge: EdgeProcess) -> str:
    """A client key for the SDK: once the UI has made a key, edge wants one from everyone."""
    made = httpx.post(f"{edge.url}/admin/keys", json={"name": "browser-team"}, timeout=10,
                      headers={"authorization": f"Bearer {ADMIN}"})
    assert made.status_code == 201, made.text
    secret: str = made.json()["key"]
    return secret


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[WebDriver, str], None]:
    """Save a screenshot as a test artefact, and into $EDGE_UI_DOCS when set."""
    artefacts = tmp_path_factory.mktemp("screenshots")
    docs = os.environ.get("EDGE_UI_DOCS")

    def shoot(driver: WebDriver, name: str) -> None:
        size = driver.get_window_size()
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(int(height) + 120, 2400))  # the whole page
        try:
            assert driver.save_screenshot(str(artefacts / f"ui-{name}.png"))
            if docs:
                assert driver.save_screenshot(str(Path(docs) / f"ui-{name}.png"))
        finally:
            driver.set_window_size(size["width"], size["height"])

    return shoot


@pytest.fixture(scope="module")
def driver(downloads: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options,
                               service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(downloads)})
    yield browser
    browser.quit()


@pytest.fixture
def page(driver: WebDriver, edge: EdgeProcess) -> Iterator[WebDriver]:
    """The browser logged in at 1280 px; after the test, its console must have no errors."""
    driver.set_window_size(1280, 900)
    driver.get(f"{edge.url}/ui#overview")
    if visible(driver, "login"):
        field = driver.find_element(By.ID, "admin-key")
        field.send_keys(ADMIN)
        field.send_keys(Keys.ENTER)
    wait(driver, lambda d: visible(d, "view-overview"), "the overview after logging in")
    driver.get_log("browser")  # start each test with an empty console
    yield driver
    assert console_errors(driver) == []


def wait(driver: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(check, message=what)


def visible(driver: WebDriver, element_id: str) -> bool:
    return bool(driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e !== null && !e.hidden;",
        element_id))


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def stat(driver: WebDriver, name: str) -> str:
    """A number on the overview, read in one step (the cards are redrawn every poll)."""
    return str(driver.execute_script(
        "const e = document.querySelector(`[data-stat=\"${arguments[0]}\"]`);"
        "return e === null ? '' : e.textContent;", name))


def show(driver: WebDriver, view: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#nav a[data-view="{view}"]').click()
    wait(driver, lambda d: visible(d, f"view-{view}"), f"the {view} view")


def key_row(driver: WebDriver, name: str) -> str | None:
    """The text of a key's row in the table, or None while it is not listed."""
    text = driver.execute_script(
        "for (const r of document.querySelectorAll('#keys-table tbody tr')) {"
        "  if (r.dataset.key === arguments[0])"
        "    return r.textContent + (r.querySelector('meter') ? ' [meter]' : ''); }"
        "return null;", name)
    return None if text is None else str(text)


def no_horizontal_overflow(driver: WebDriver) -> bool:
    return bool(driver.execute_script(
        "const d = document.documentElement; return d.scrollWidth <= d.clientWidth;"))


def sdk(edge: EdgeProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{edge.url}/v1", api_key=key, max_retries=0)


def ask(edge: EdgeProcess, key: str, text: str) -> Any:
    """One chat completion with the openai SDK, its connections closed after."""
    with sdk(edge, key) as client:
        return chat(client, text)


def test_login_then_the_numbers_move_with_traffic(
        page: WebDriver, edge: EdgeProcess, team: str,
        shots: Callable[[WebDriver, str], None]) -> None:
    assert page.execute_script("return sessionStorage.getItem('edge-admin-key')") == ADMIN
    wait(page, lambda d: stat(d, "requests") != "", "the first stats")
    before = int(stat(page, "requests").replace(",", ""))
    with sdk(edge, team) as client:
        for n in range(4):
            chat(client, f"browser question {n}")
        chat(client, "browser question 0")  # an L1 hit
    wait(page, lambda d: stat(d, "requests").replace(",", "") == str(before + 5),
         "the request count to move by five")
    wait(page, lambda d: stat(d, "hit_rate_l1") not in ("", "–", "0.0 %"), "an L1 hit rate")
    assert stat(page, "p50").endswith(" ms")
    assert page.find_elements(By.CSS_SELECTOR, "#chart-requests svg rect")
    # the 1 h window is one click away and shows the same requests
    page.find_element(By.CSS_SELECTOR, '[data-window="1h"]').click()
    wait(page, lambda d: d.find_element(By.CSS_SELECTOR, '[data-window="1h"]')
         .get_attribute("aria-pressed") == "true", "the 1 h window selected")
    wait(page, lambda d: stat(d, "requests").replace(",", "") == str(before + 5), "1 h numbers")
    page.find_element(By.CSS_SELECTOR, '[data-window="5m"]').click()
    shots(page, "overview")


def test_a_key_made_in_the_ui_works_until_revoked(page: WebDriver, edge: EdgeProcess,
                                                  shots: Callable[[WebDriver, str], None]) -> None:
    show(page, "keys")
    page.find_element(By.ID, "new-name").send_keys("ui-made")
    page.find_element(By.ID, "new-rpm").send_keys("600")
    page.find_element(By.ID, "new-budget").send_keys("5")
    page.find_element(By.ID, "new-models").send_keys("gpt-4o*")
    page.find_element(By.ID, "create-button").click()
    wait(page, lambda d: visible(d, "secret"), "the secret shown")
    secret = page.find_element(By.ID, "secret-value").text
    assert secret.startswith("sk-edge-")
    assert len(secret) == 48
    row = wait(page, lambda d: key_row(d, "ui-made"), "the new key listed")
    assert "gpt-4o*" in row
    assert secret[:12] in row
    assert secret not in row  # only the prefix is listed
    assert "[meter]" in row  # spend against the budget as a bar
    answer = ask(edge, secret, "made in the dashboard")
    assert answer.choices[0].message.content
    page.find_element(By.ID, "secret-copy").click()
    wait(page, lambda d: d.find_element(By.ID, "secret-copied").text != "", "copy feedback")
    shots(page, "keys")
    page.find_element(By.ID, "secret-done").click()
    assert page.find_element(By.ID, "secret-value").text == ""  # shown once, then gone
    assert not visible(page, "secret")

    # rotate: a new secret, shown once; the old one stops working at once
    page.find_element(By.CSS_SELECTOR, 'button[aria-label="Rotate ui-made"]').click()
    wait(page, lambda d: d.find_element(By.ID, "secret-value").text not in ("", secret),
         "the rotated secret shown")
    rotated = page.find_element(By.ID, "secret-value").text
    assert rotated.startswith("sk-edge-")
    with pytest.raises(openai.AuthenticationError):
        ask(edge, secret, "with the old secret")
    assert ask(edge, rotated, "with the new secret").choices[0].message.content
    secret = rotated
    page.find_element(By.ID, "secret-done").click()

    revoke = page.find_element(By.CSS_SELECTOR, 'button[aria-label="Revoke ui-made"]')
    revoke.click()
    wait(page, lambda d: revoke.text == "Confirm revoke", "the revoke confirmation")
    revoke.click()
    wait(page, lambda d: key_row(d, "ui-made") is None, "the key gone from the list")
    with pytest.raises(openai.AuthenticationError) as refused:
        ask(edge, secret, "after revoke")
    assert refused.value.status_code == 401


def test_a_hostile_key_name_stays_text(page: WebDriver) -> None:
    show(page, "keys")
    page.execute_script("window.__alerted = false; "
                        "window.alert = () => { window.__alerted = true; };")
    page.find_element(By.ID, "new-name").send_keys(XSS)
    page.find_element(By.ID, "create-button").click()
    wait(page, lambda d: d.find_element(By.ID, "create-error").text != "", "the name refused")
    assert XSS in page.find_element(By.ID, "create-error").text
    # the same text where the store accepts it: an allowed-models glob
    page.find_element(By.ID, "new-name").clear()
    page.find_element(By.ID, "new-name").send_keys("hostile-models")
    page.find_element(By.ID, "new-models").send_keys(XSS)
    page.find_element(By.ID, "create-button").click()
    row = wait(page, lambda d: key_row(d, "hostile-models"), "the key listed")
    assert XSS in row
    page.find_element(By.ID, "secret-done").click()
    assert page.find_elements(By.TAG_NAME, "img") == []
    assert page.execute_script("return window.__alerted") is False
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text  # noqa: B018 - raises when no alert is open


def test_usage_table_sorts_and_exports_the_same_rows(
        page: WebDriver, edge: EdgeProcess, team: str, downloads: Path,
        shots: Callable[[WebDriver, str], None]) -> None:
    ask(edge, team, "usage row")
    show(page, "usage")
    page.find_element(By.CSS_SELECTOR, 'input[name="group"][value="model"]').click()
    page.find_element(By.ID, "usage-load").click()
    expected = httpx.get(f"{edge.url}/admin/usage?since=24h&group_by=key,model", timeout=10,
                         headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
    assert expected
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#usage-table tbody tr"))
         == len(expected), "the usage rows")
    headers = [h.text for h in page.find_elements(By.CSS_SELECTOR, "#usage-table thead th")]
    assert headers[:3] == ["key", "model", "requests"]
    requests_header = page.find_elements(By.CSS_SELECTOR, "#usage-table thead th button")[2]
    requests_header.click()
    requests_header = page.find_elements(By.CSS_SELECTOR, "#usage-table thead th button")[2]
    requests_header.click()  # descending
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#usage-table thead th")[2]
         .get_attribute("aria-sort") == "descending", "sorted by requests")
    shown = [int(r.find_elements(By.TAG_NAME, "td")[2].text.replace(",", ""))
             for r in page.find_elements(By.CSS_SELECTOR, "#usage-table tbody tr")]
    assert shown == sorted((r["requests"] for r in expected), reverse=True)
    shots(page, "usage")

    for old in downloads.glob("*.csv"):
        old.unlink()
    page.find_element(By.ID, "usage-csv").click()
    target = downloads / "edge-usage.csv"
    wait(page, lambda d: target.exists() and target.stat().st_size > 0, "the CSV download")
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    fields = ["key", "model", "requests", "cache_hits", "prompt_tokens", "completion_tokens",
              "cost_usd", "saved_usd"]
    assert list(rows[0]) == fields
    def typed(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["key"] or "", row["model"] or "",
                *(float(row[f]) for f in fields[2:]))

    assert sorted(typed(r) for r in rows) == sorted(typed(r) for r in expected)

    # a chosen range: a day in 2020 has no rows
    Select(page.find_element(By.ID, "usage-since")).select_by_value("custom")
    assert visible(page, "usage-custom")
    page.execute_script("document.getElementById('usage-from').value = '2020-01-01T00:00';"
                        "document.getElementById('usage-to').value = '2020-01-02T00:00';")
    page.find_element(By.ID, "usage-load").click()
    wait(page, lambda d: "2020-01-0" in d.find_element(By.ID, "usage-range").text, "the range")
    assert page.find_element(By.ID, "usage-range").text.endswith(": 0 rows.")
    assert page.find_elements(By.CSS_SELECTOR, "#usage-table tbody tr") == []


def test_providers_view(page: WebDriver, shots: Callable[[WebDriver, str], None]) -> None:
    show(page, "providers")
    selector = '#providers-table tr[data-provider="up"]'
    wait(page, lambda d: "healthy" in d.find_element(By.CSS_SELECTOR, selector).text
         if d.find_elements(By.CSS_SELECTOR, selector) else False, "the provider row")
    row = page.find_element(By.CSS_SELECTOR, selector)
    assert "healthy" in row.text
    assert "closed" in row.text
    assert "1 / 1" in row.text
    wait(page, lambda d: "gpt-4o-mini" in d.find_element(By.ID, "deployments-table").text,
         "the deployment row")
    assert PROVIDER_KEY[:12] not in page.page_source
    shots(page, "providers")


def test_keyboard_reaches_every_view_with_focus_visible(page: WebDriver) -> None:
    body = page.find_element(By.TAG_NAME, "body")
    body.click()
    for _ in range(20):
        active = page.switch_to.active_element
        if active.get_attribute("data-view") == "usage":
            break
        active.send_keys(Keys.TAB)
    else:
        pytest.fail("Tab never reached the Usage link")
    outline = page.execute_script(
        "return getComputedStyle(document.activeElement).outlineStyle;")
    assert outline != "none"
    page.switch_to.active_element.send_keys(Keys.ENTER)
    wait(page, lambda d: visible(d, "view-usage"), "the usage view by keyboard")


@pytest.mark.parametrize("width", [1280, 390])
def test_every_view_fits_the_width(page: WebDriver, width: int,
                                   shots: Callable[[WebDriver, str], None]) -> None:
    page.set_window_size(width, 900)
    for view in ("overview", "keys", "usage", "providers"):
        show(page, view)
        wait(page, no_horizontal_overflow, f"{view} at {width} px without horizontal scroll")
    if width == 390:
        show(page, "overview")
        wait(page, lambda d: stat(d, "requests") != "", "stats at 390 px")
        shots(page, "overview-390")


def test_dark_and_light_follow_the_system(page: WebDriver,
                                          shots: Callable[[WebDriver, str], None]) -> None:
    def background() -> str:
        return str(page.execute_script("return getComputedStyle(document.body).backgroundColor"))

    try:
        page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
            {"name": "prefers-color-scheme", "value": "light"}]})
        light = background()
        page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
            {"name": "prefers-color-scheme", "value": "dark"}]})
        dark = background()
        assert light != dark
        # dark means a dark background: each channel of rgb(r, g, b) below the middle
        assert all(int(c) < 128 for c in dark[dark.index("(") + 1:-1].split(","))
        wait(page, lambda d: stat(d, "requests") != "", "stats in dark mode")
        shots(page, "overview-dark")
    finally:
        page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def test_without_an_admin_key_the_page_says_how(tmp_path: Path, mock_upstream: MockUpstream,
                                                driver: WebDriver) -> None:
    proc = EdgeProcess(tmp_path, **edge_args(mock_upstream, admin_key=False))
    try:
        driver.get_log("browser")
        driver.get(f"{proc.url}/ui")
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "EDGE_ADMIN_KEY" in text
        assert "admin_key" in text
        assert driver.find_elements(By.ID, "login") == []
        assert console_errors(driver) == []
    finally:
        proc.stop()
