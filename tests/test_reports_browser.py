"""The table5 HTML report in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
paper values and ours visible, the unit table sorts and filters, and the page makes no network
request. Saves a screenshot to ``reports/table5-browser.png`` (a CI artifact).

Skipped, with the reason, where Chromium or Playwright is absent; with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from table5_results import ROOT, TABLE5, fill_table5

from harness.reports import build_report
from harness.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SCREENSHOT = ROOT / "reports" / "table5-browser.png"


def _require_browser() -> None:
    reason = ""
    if CHROMIUM is None:
        reason = "Chromium is not installed (Debian: apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "Playwright is not installed (pip install -e '.[dev]')"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_browser()
    tmp = tmp_path_factory.mktemp("browser")
    store = Store(f"sqlite:///{tmp / 'h.db'}")
    fill_table5(store)
    return build_report(store, TABLE5, None, "html", tmp / "out")[0]


def _column(page, index: int) -> list[str]:  # noqa: ANN001 - a Playwright Page
    return page.eval_on_selector_all(
        "#units tbody tr:not([hidden])", f"rows => rows.map(r => r.cells[{index}].getAttribute('data-v'))"
    )


@pytest.mark.slow
def test_table5_report_in_headless_chromium(report: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    requested: list[str] = []
    blocked: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            # the network is off: anything but the file itself (and data: URLs) is aborted and recorded
            context.route(lambda url: not url.startswith(("file:", "data:")),
                          lambda route: (blocked.append(route.request.url), route.abort()))  # fmt: skip
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(report.as_uri())

            # paper values and ours, side by side, for every sub-table
            for table, row, paper, ours in (
                ("t5a", "Entropy", "84.9", "83.5"),
                ("t5a", "Magnitude", "38.1", "41.5"),
                ("t5b_matched", "11.8%", "84.9", "83.5"),  # the 11.8% row is the default (5a) one
                ("t5c", "RGB + Logits", "80.2", "60.4"),
                ("t5d", "MinkUNet {1,2,4,8}", "80.5", "60.7"),
                ("t5e", "Gated", "80.9", "61.2"),
            ):
                line = page.locator(f"#paper-{table} tbody tr").filter(has=page.locator("th", has_text=row)).first
                expect(line).to_be_visible()
                cells = line.locator("td").all_inner_texts()
                assert paper in cells and ours in cells, (table, row, cells)
                assert cells.index(paper) + 1 == cells.index(ours)  # the paper's value, then ours
            for table in ("t5a", "t5b", "t5c", "t5d", "t5e"):
                expect(page.locator(f"#paper-{table}")).to_be_visible()

            # sorting: a metric column orders the rows, ascending then descending, empties last
            ids_before = _column(page, 0)
            recall = page.locator("#units thead th", has_text="recall (%)")
            recall.click()
            values = [float(v) for v in _column(page, recall.evaluate("th => th.cellIndex")) if v]
            assert values == sorted(values) and len(values) > 20
            assert _column(page, 0) != ids_before
            recall.click()
            values = [float(v) for v in _column(page, recall.evaluate("th => th.cellIndex")) if v]
            assert values == sorted(values, reverse=True)
            page.locator("#units thead th", has_text="#").first.click()
            assert [int(float(v)) for v in _column(page, 0) if v] == sorted(int(float(v)) for v in ids_before if v)

            # filtering: words, then the status picker
            total = page.locator("#units tbody tr").count()
            page.fill("#unit-filter", "magnitude 5a")
            expect(page.locator("#units tbody tr:not([hidden])")).to_have_count(2)
            expect(page.locator("#unit-count")).to_have_text(f"2 of {total} units shown")
            page.fill("#unit-filter", "")
            page.select_option("#unit-status", "oom")
            visible = page.locator("#units tbody tr:not([hidden])")
            expect(visible).to_have_count(1)
            assert "CUDA out of memory" in visible.first.inner_text()
            page.select_option("#unit-status", "")
            expect(page.locator("#units tbody tr:not([hidden])")).to_have_count(total)

            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert blocked == [] and all(url.startswith(("file:", "data:")) for url in requested), requested
    assert errors == []
    assert SCREENSHOT.stat().st_size > 10_000
