"""The it-admin's pages and the request form in headless Chromium (one server, one browser for
the module): the pool's free GPUs, users (a role change and a disabled user, both audited), tokens,
the audit log with its filters, team policies, the machines of everyone with owner and team
filters; a member's form offers only what can be had now and clears after a request."""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import declared_pool
from tests.test_server_fixtures import Served, seed_machine, start_server, stop_server
from tests.test_webui import CHROMIUM, DRIVER, no_external_requests, sign_in

CONFIG = """policy:
  teams:
    ml:
      max_ttl: 12h
      default_ttl: 8h
      max_gpus_running: 2
      targets: [onprem, aws]
"""


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from deepops_infra.ledger import store
    from deepops_infra.ledger.schema import GpuLease

    tmp = tmp_path_factory.mktemp("admin")
    s = start_server(tmp, f"sqlite:///{tmp / 'ledger.db'}", config=CONFIG)
    (s.home / "pool.yaml").write_text(declared_pool(2))
    ledger = s.ledger()
    seed_machine(ledger, "m-alice001", "alice", "ml")
    seed_machine(ledger, "m-carl0001", "carl", "cv", price="3.00")
    with ledger.write() as session:  # alice's machine holds GPU 0: one of two is free
        session.add(GpuLease(machine_id="m-alice001", host="localhost", gpu_index=0, leased_at=store.now()))
    ledger.close()
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or not Path(DRIVER).exists() or not shutil.which("chromedriver"):
        pytest.skip("chromium and chromium-driver are not installed (scripts/test-services.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1366,900"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def texts(driver: Any, css: str) -> list[str]:
    """The rendered text of what matches, read in one step (the page redraws its tables while a
    test reads them), cells joined by single spaces."""
    script = "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText.replace(/\\s+/g, ' ').trim())"
    return driver.execute_script(script, css)


def wait(driver: Any, predicate: Any, what: str, timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: predicate(d), what)


def fresh(driver: Any, s: Served, user: str) -> None:
    driver.get(s.url + "/")
    driver.execute_script("sessionStorage.clear()")
    sign_in(driver, s, user)


def test_it_admin_pages(browser: Any, server: Served, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    fresh(browser, server, "ivan")
    wait(browser, lambda d: texts(d, "#machines tbody tr"), "machines listed")
    assert browser.find_element(By.ID, "machines-title").text == "All machines"
    heads = texts(browser, "#machines thead th")
    assert "Owner" in heads and "Team" in heads
    Select(browser.find_element(By.ID, "m-team")).select_by_value("cv")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#machines tbody tr")) == 1, "filtered by team")
    ids = browser.execute_script("return [...document.querySelectorAll('#machines tbody tr')].map((r) => r.dataset.id)")
    assert ids == ["m-carl0001"] and " cpu-minimal carl cv " in texts(browser, "#machines tbody tr")[0]
    assert browser.find_element(By.ID, "machines-title").text == "All machines in team cv"

    browser.find_element(By.ID, "tab-admin").click()
    wait(browser, lambda d: texts(d, "#a-pool tbody tr") and texts(d, "#a-policies tbody tr"), "admin pages")
    assert browser.find_element(By.ID, "a-pool-title").text == "Pool: 1 of 2 GPUs free"
    (host,) = texts(browser, "#a-pool tbody tr")
    assert host.startswith("localhost local 2 1 1 1 \u00d7 A100-80GB")  # "1 (times) A100-80GB" free
    assert not browser.find_element(By.ID, "a-clusters-box").is_displayed()
    assert [r.split()[0] for r in texts(browser, "#a-policies tbody tr")] == ["(default)", "ml"]
    assert "onprem, aws" in texts(browser, "#a-policies tbody tr")[1]
    users = texts(browser, "#a-users tbody tr")
    assert len(users) == 6 and len(texts(browser, "#a-tokens tbody tr")) == 6

    # a role change: explicit (confirmed), at once, audited with before -> after and the address
    Select(browser.find_element(By.CSS_SELECTOR, "#a-users tr[data-user=carl] select")).select_by_value("member")
    browser.switch_to.alert.accept()
    wait(browser, lambda d: "carl: role team-admin -> member" in texts(d, "#message")[0], "role set")
    wait(browser, lambda d: any("users_set_role" in r for r in texts(d, "#a-audit tbody tr")), "audited")
    first = texts(browser, "#a-audit tbody tr")[0]
    assert "ivan users_set_role carl 200 ok 127.0.0.1 role team-admin -> member" in first
    with server.client("carl") as c:
        assert c.get("/me").json()["role"] == "member"

    browser.find_element(By.CSS_SELECTOR, "#a-users tr[data-user=bob] button").click()
    browser.switch_to.alert.accept()
    wait(browser, lambda d: "bob: disabled" in texts(d, "#message")[0], "bob disabled")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#a-users tr.disabled[data-user=bob]"), "shown disabled")
    assert "Enable" in texts(browser, "#a-users tr[data-user=bob]")[0]
    with server.client("bob") as c:
        assert c.get("/me").status_code == 401
    wait(browser, lambda d: texts(d, "#a-tokens tr.state-disabled"), "bob's token shown disabled")
    assert "Disable" not in texts(browser, "#a-users tr[data-user=ivan]")[0]  # not oneself

    browser.find_element(By.ID, "a-audit-action").send_keys("disable")
    browser.find_element(By.ID, "a-audit-since").send_keys("1h")
    browser.find_element(By.ID, "a-audit-go").click()
    wait(browser, lambda d: all("users_disable" in r for r in texts(d, "#a-audit tbody tr")), "audit filtered")
    assert len(texts(browser, "#a-audit tbody tr")) == 1
    no_external_requests(browser, server)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1366
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shots / "admin.png"))
    assert (shots / "admin.png").stat().st_size > 10_000


def test_member_form_offers_what_can_be_had_and_clears(browser: Any, server: Served, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    fresh(browser, server, "alice")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#f-gpus option[value='A100-80GB:1']"), "form filled")
    assert not browser.find_element(By.ID, "tab-admin").is_displayed()
    assert browser.find_element(By.ID, "machines-title").text == "Your machines"
    assert not browser.find_element(By.CSS_SELECTOR, "#machines thead th.team").is_displayed()
    assert not browser.find_element(By.ID, "m-owner").is_displayed()  # the owner and team filters are for admins
    value = lambda css: [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, css)]  # noqa: E731
    assert value("#f-target option") == ["onprem"]  # aws is allowed, but no Pulumi CLI or credentials here
    assert value("#f-gpus option") == ["0", "A100-80GB:1"]  # GPU 0 is leased
    assert value("#f-ttl option") == ["30m", "1h", "2h", "4h", "8h", "12h"]  # up to the policy's real maximum
    assert Select(browser.find_element(By.ID, "f-ttl")).first_selected_option.get_attribute("value") == "8h"
    note = browser.find_element(By.ID, "policy-note").text
    assert "2 of 2 GPUs free to request" in note and "aws (" in note

    # the request is answered by a stand-in (no launch here): the form clears and asks again
    browser.execute_script(
        """const real = window.fetch; window.asked = [];
        window.fetch = (url, init) => {
          window.asked.push(url);
          if (init && init.method === "POST" && url.endsWith("/machines")) {
            window.sent = JSON.parse(init.body);
            return Promise.resolve(new Response(JSON.stringify({id: "m-new00001", host: "localhost"}),
              {status: 202, headers: {"Content-Type": "application/json"}}));
          }
          return real(url, init);
        };"""
    )
    Select(browser.find_element(By.ID, "f-gpus")).select_by_value("A100-80GB:1")
    Select(browser.find_element(By.ID, "f-ttl")).select_by_value("12h")
    browser.find_element(By.ID, "f-project").send_keys("vision")
    browser.find_element(By.ID, "f-name").send_keys("run-1")
    browser.find_element(By.ID, "f-submit").click()
    wait(browser, lambda d: "m-new00001 requested on localhost" in texts(d, "#message")[0], "requested")
    sent = browser.execute_script("return window.sent")
    assert sent["gpus"] == "A100-80GB:1" and sent["ttl"] == "12h" and sent["project"] == "vision"
    wait(browser, lambda d: d.find_element(By.ID, "f-project").get_attribute("value") == "", "form cleared")
    assert browser.find_element(By.ID, "f-name").get_attribute("value") == ""
    wait(browser, lambda d: d.execute_script("return document.getElementById('f-ttl').value") == "8h", "default ttl")
    assert any(u.endswith("/available") for u in browser.execute_script("return window.asked"))
    browser.save_screenshot(str(shots / "member-form.png"))
