"""The web page, driven in headless Chromium (Debian's chromium and chromium-driver, through
selenium): a data scientist requests a machine on the local pool, sees it, releases it; finance
sees spend by team and month with its charts. Screenshots are saved under the test's tmp_path."""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_server_fixtures import Served, seed_machine, start_server, stop_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or not Path(DRIVER).exists():
        pytest.skip("chromium and chromium-driver are not installed (scripts/test-services.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1366,900",  # a laptop screen
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def sign_in(driver: Any, s: Served, user: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(s.url + "/")
    driver.find_element(By.ID, "token").send_keys(s.tokens[user])
    driver.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    WebDriverWait(driver, 15).until(ec.text_to_be_present_in_element((By.ID, "who"), user))


def no_external_requests(driver: Any, s: Served) -> None:
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(s.url) for u in urls), urls


@pytest.fixture
def finance_server(tmp_path: Path) -> Iterator[Served]:
    config = "budgets:\n  teams:\n    ml: 100\n    cv: 5\n"
    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", config=config)
    ledger = s.ledger()
    seed_machine(ledger, "m-alice001", "alice", "ml", price="1.50", hours_ago=3)
    seed_machine(ledger, "m-carl0001", "carl", "cv", price="3.00", hours_ago=2)
    ledger.close()
    yield s
    stop_server(s)


def test_finance_view_renders_charts_budgets_and_csv(browser: Any, finance_server: Served, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sign_in(browser, finance_server, "fiona")
    assert not browser.find_element(By.ID, "tab-machines").is_displayed()
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#svg-months rect.bar"))
    bars = browser.find_elements(By.CSS_SELECTOR, "#svg-months rect.bar")
    assert len(bars) == 2  # ml and cv, this month
    titles = sorted(b.find_element(By.TAG_NAME, "title").get_attribute("textContent") for b in bars)
    assert titles[0].startswith("cv ") and titles[0].endswith("$6.00") and titles[1].endswith("$4.50")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#svg-idle rect.bar")) == 2  # no idle time: no idle bars
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#c-table tbody tr")]
    assert rows[0].startswith("cv $6.00") and rows[1].startswith("ml $4.50") and rows[2].startswith("total $10.50")
    budgets = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#b-table tbody tr")]
    assert any(b.startswith("team cv $5.00 $6.00") for b in budgets), budgets  # over its budget
    browser.find_element(By.ID, "c-csv").click()
    WebDriverWait(browser, 10).until(lambda d: "downloaded" in d.find_element(By.ID, "message").text)
    no_external_requests(browser, finance_server)
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 1366  # no sideways scrolling on a laptop screen
    browser.save_screenshot(str(tmp_path / "finance.png"))
    assert (tmp_path / "finance.png").stat().st_size > 10_000


def test_member_sees_own_machines_and_the_form_follows_policy(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    config = "policy:\n  teams:\n    ml:\n      max_ttl: 4h\n      max_gpus_running: 2\n      targets: [onprem]\n"
    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", config=config)
    try:
        ledger = s.ledger()
        seed_machine(ledger, "m-alice001", "alice", "ml")
        seed_machine(ledger, "m-bob00001", "bob", "ml")
        ledger.close()
        sign_in(browser, s, "alice")
        WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#machines tbody tr"))
        ids = [r.get_attribute("data-id") for r in browser.find_elements(By.CSS_SELECTOR, "#machines tbody tr")]
        assert ids == ["m-alice001"]
        assert not browser.find_element(By.ID, "tab-costs").is_displayed()
        ttls = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#f-ttl option")]
        assert ttls == ["30m", "1h", "2h", "4h"]
        targets = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#f-target option")]
        assert targets == ["onprem"]
        gpus = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#f-gpus option")]
        assert gpus == ["0"]  # only what can be had now: this pool's localhost has no GPUs
        row = browser.find_element(By.CSS_SELECTOR, "#machines tbody tr")
        assert "5h59m" in row.text and "$1.50/h" in row.text and "$3.00" in row.text  # time left, price, cost so far
        no_external_requests(browser, s)
        browser.save_screenshot(str(tmp_path / "member.png"))
    finally:
        stop_server(s)


@pytest.mark.ansible
def test_request_list_release_on_the_local_pool(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        sign_in(browser, s, "alice")
        WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#f-image option"))
        Select(browser.find_element(By.ID, "f-gpus")).select_by_value("0")
        Select(browser.find_element(By.ID, "f-image")).select_by_value("cpu-minimal")
        Select(browser.find_element(By.ID, "f-ttl")).select_by_value("1h")
        browser.find_element(By.ID, "f-submit").click()
        WebDriverWait(browser, 240).until(
            lambda d: [c.text for c in d.find_elements(By.CSS_SELECTOR, "#machines tbody tr td.status-ready")]
        )
        row = browser.find_element(By.CSS_SELECTOR, "#machines tbody tr")
        mid = row.get_attribute("data-id")
        assert "localhost" in row.text and "alice" in row.text
        browser.save_screenshot(str(tmp_path / "requested.png"))
        row.find_element(By.XPATH, ".//button[text()='Release']").click()
        browser.switch_to.alert.accept()
        WebDriverWait(browser, 120).until(lambda d: f"{mid} terminated after" in d.find_element(By.ID, "message").text)
        WebDriverWait(browser, 10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#machines tbody tr"))
        browser.save_screenshot(str(tmp_path / "released.png"))
        with s.client("alice") as c:
            assert c.get(f"/machines/{mid}").json()["status"] == "terminated"
    finally:
        stop_server(s)
