"""The finance view and the HTML report in headless Chromium: axis labels, team colours, over-budget
highlighting, empty months, nothing clipped, the HTML report download and the shared-idle option."""

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from deepops_infra.costs.charts import IDLE, team_colors
from deepops_infra.costs.html import render_html
from tests.test_cost_charts import report_of
from tests.test_server_fixtures import Served
from tests.test_webui import browser, finance_server, sign_in  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow  # starts a server and a browser

# Every <text> of the SVGs under `root` whose box leaves its SVG's viewBox (a clipped label).
CLIPPED = """
const out = [];
for (const svg of document.querySelectorAll(arguments[0] + " svg")) {
  const vb = svg.viewBox.baseVal;
  const toSvg = svg.getScreenCTM().inverse();
  for (const t of svg.querySelectorAll("text")) {  // the box's corners in the SVG's own units, after any rotation
    const b = t.getBBox(), m = toSvg.multiply(t.getScreenCTM());
    const corners = [[b.x, b.y], [b.x + b.width, b.y], [b.x, b.y + b.height], [b.x + b.width, b.y + b.height]]
      .map(([x, y]) => new DOMPoint(x, y).matrixTransform(m));
    const xs = corners.map((p) => p.x), ys = corners.map((p) => p.y);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x0 < vb.x - 0.5 || y0 < vb.y - 0.5 || x1 > vb.x + vb.width + 0.5 || y1 > vb.y + vb.height + 0.5)
      out.push(`${svg.id}: ${t.textContent} x ${x0.toFixed(1)}..${x1.toFixed(1)} y ${y0.toFixed(1)}..${y1.toFixed(1)}`);
  }
}
return out;
"""
TICK = re.compile(r"^\$(0|[1-9]\d{0,2}(,\d{3})*)(\.\d+)?$")


def texts(driver: Any, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_finance_view_reads_right(browser: Any, finance_server: Served, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    sign_in(browser, finance_server, "fiona")
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#b-table tbody tr"))
    # Axis: round, distinct labels from $0 past the largest month (ml 4.50 + cv 6.00 this month).
    ticks = texts(browser, "#svg-months text.tick")
    assert ticks[0] == "$0" and len(set(ticks)) == len(ticks) >= 3 and all(TICK.match(t) for t in ticks), ticks
    top = Decimal(ticks[-1][1:].replace(",", ""))
    assert top >= Decimal("10.50") and top <= 20, ticks
    assert texts(browser, "#svg-months text.empty") == ["no spend"] * 5  # the five months before: empty
    # One colour per team, the same as the HTML report's; idle in its own colour.
    colors = team_colors(["ml", "cv"])
    for bar in browser.find_elements(By.CSS_SELECTOR, "#svg-months rect.bar, #svg-idle rect.bar:not(.idle)"):
        assert bar.get_attribute("fill") == colors[bar.get_attribute("data-team")]
    assert all(b.get_attribute("fill") == IDLE for b in browser.find_elements(By.CSS_SELECTOR, "#svg-idle rect.idle"))
    legend = texts(browser, "#chart-months .legend span")
    assert legend == ["cv", "ml"]
    # cv spent $6.00 of its $5.00 budget: highlighted in both tables, ml is not.
    over = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#c-table tbody tr.over")]
    assert len(over) == 1 and over[0].startswith("cv $6.0"), over
    over_budget = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#b-table tbody tr.over")]
    assert len(over_budget) == 1 and over_budget[0].startswith("team cv $5.00 $6.0"), over_budget
    cell = browser.find_element(By.CSS_SELECTOR, "#c-table tbody tr.over td")
    assert cell.value_of_css_property("background-color") in ("rgba(253, 236, 236, 1)", "rgb(253, 236, 236)")
    assert browser.execute_script(CLIPPED, "#view-costs") == []
    # The HTML report beside the CSV; the server's report marks cv over its budget too.
    browser.find_element(By.ID, "c-html").click()
    WebDriverWait(browser, 15).until(lambda d: ".html" in d.find_element(By.ID, "message").text)
    assert re.match(r"downloaded deepops-costs-\d{4}-\d{2}\.html$", browser.find_element(By.ID, "message").text)
    html = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/v1/costs?by=team&format=html', {headers: {Authorization: 'Bearer ' +"
        " sessionStorage.getItem('deepops-token')}}).then((r) => r.text()).then(done, (e) => done(String(e)));"
    )
    assert html.startswith("<!DOCTYPE html>") and "over its $5.00 budget" in html
    browser.save_screenshot(str(tmp_path / "finance-separate.png"))
    # Idle shared across teams: the table says so.
    Select(browser.find_element(By.ID, "c-idle")).select_by_value("share")
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.ID, "c-idle-head").text == "Shared idle cost")
    assert "idle cost shared" in browser.find_element(By.ID, "c-title").text


def test_html_report_at_millions_is_not_clipped(browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    names = {"vision-and-perception-research": Decimal("2500000"), "nlp": Decimal("730000.55")}
    report = report_of(names, idle=Decimal("1234567.89"))
    page = tmp_path / "millions.html"
    page.write_text(render_html(report), encoding="utf-8")
    browser.get(page.as_uri())
    assert browser.execute_script(CLIPPED, "main") == []
    ticks = texts(browser, "#chart-spend text.tick")
    assert ticks == ["$0", "$1,000,000", "$2,000,000", "$3,000,000", "$4,000,000"], ticks
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg")) == 3
    browser.save_screenshot(str(tmp_path / "millions.png"))
