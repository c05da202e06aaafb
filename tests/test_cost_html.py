"""The HTML cost report: one self-contained file, opened in headless Chromium (screenshot + DOM)."""

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from deepops_infra.costs.html import render_html
from deepops_infra.costs.period import Period
from deepops_infra.costs.report import build
from deepops_infra.ledger.db import Ledger
from tests.conftest import _missing
from tests.test_costs import NOW, add_machine, seed

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    _missing("chromium not installed (apt-get install chromium)")
    raise AssertionError("unreachable")


def seed_month(ledger: Ledger) -> None:
    seed(ledger)
    with ledger.write() as s:
        for i, day in enumerate(range(1, 29, 3)):  # a steady load: the daily chart has bars on most days
            add_machine(
                s,
                f"m-day{day:02d}",
                team=("vision", "nlp", "speech")[i % 3],
                owner="dee",
                price="3.20",
                gpus=2,
                intervals=[(f"2026-10-{day:02d}T06:00:00", f"2026-10-{day:02d}T18:00:00")],
                samples=[(f"2026-10-{day:02d}T12:00:00", 7200, False)],
            )


def test_report_is_self_contained(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    seed_month(ledger)
    html = render_html(build(ledger, Period.month("2026-10"), ["team"], NOW, details=True))
    assert html.startswith("<!DOCTYPE html>") and "</html>" in html
    assert not re.search(r"<script|<link|@import|https?://(?!www\.w3\.org/2000/svg)", html)  # nothing to fetch
    assert html.count("<svg") == 3 and 'id="summary"' in html and 'id="top-machines"' in html
    # 10 machines at 3.20/h for 12 h = 38.40 each on top of the fixtures
    assert "$38.40" in html and "$119.78" not in html.split('id="summary"')[0]


def test_report_in_headless_chromium(tmp_path: Path, deepops: Any) -> None:
    browser = chromium()
    seed_month(deepops.ledger())
    report = tmp_path / "costs-2026-10.html"
    deepops.run("cost", "--by", "team", "--month", "2026-10", "--format", "html", "-o", str(report), check=True)
    profile = tmp_path / "chromium-profile"
    shot = tmp_path / "costs-2026-10.png"
    run = subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000, run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = os.environ.get("DEEPOPS_ARTIFACTS")
    if saved:  # keep the picture for a person to look at
        Path(saved).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(saved) / shot.name)
    dom = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # The browser parsed the charts and tables: bars for the daily spend, the top machines and idle waste.
    for chart in ("chart-spend", "chart-top", "chart-idle"):
        svg = dom.split(f'id="{chart}"', 1)[1].split("</svg>", 1)[0]
        assert svg.count('class="bar') >= 3, chart
    summary = dom.split('id="summary"', 1)[1].split("</table>", 1)[0]
    assert [re.sub("<.*?>", "", c) for c in re.findall(r"<td>(.*?)</td>", summary)][:3] == ["vision", "nlp", "speech"]
    assert "Total" in summary and "$503.78" in summary  # 119.778556 + 10 x 38.40
    assert dom.count("<tr>", dom.index('id="top-machines"')) >= 10
    assert "How these numbers are made" in dom
