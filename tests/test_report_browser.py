"""report.html in a real browser (headless Chromium driven by selenium): what a reader sees.

A report of two tasks and several methods, built from synthetic run directories, is opened
as a file:// URL (the page fetches nothing: the machine has no network). The test saves a
full-page screenshot to test-artifacts/report.png below the repository root, or to the
directory named by the environment variable SADI_TEST_ARTIFACTS.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from tests.test_report import build_dirs, scores_pair, write_run
except ImportError:  # plain `pytest` (not `python -m pytest`) leaves the repo root off sys.path
    from test_report import build_dirs, scores_pair, write_run  # type: ignore[no-redef]

from sadi.report import main
from sadi.report.main_table import COLUMNS

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", re.IGNORECASE)


def artifacts() -> Path:
    """Where the screenshot goes: $SADI_TEST_ARTIFACTS, else <repo root>/test-artifacts."""
    out = Path(os.environ.get("SADI_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def two_task_report(root: Path) -> Path:
    """`python -m sadi.report` over copa (build_dirs: a SADI sweep, ITI, CAA without
    samples, unsteered) and boolq (SADI, ITI and CAA at different gains, unsteered)."""
    dirs = build_dirs(root / "copa")
    gains = {"sadi": 0.12, "iti": -0.04, "caa": 0.02, "none": 0.0}
    for i, (method, gain) in enumerate(gains.items()):
        scores = {
            "select": scores_pair(120, 0.5, max(gain, 0.0), 10 + i),
            "report": scores_pair(160, 0.55, max(gain, 0.0), 20 + i),
        }
        if gain < 0:  # steering that hurts: the steered model loses items instead
            base, steered = scores_pair(160, 0.55, -gain, 30 + i)
            scores["report"] = (steered, base)
        params = {"none": {}, "caa": {"layer": 2, "multiplier": 2.0}}.get(
            method, {"k": 3, "alpha" if method == "iti" else "strength": 4.0}
        )
        component = "residual" if method == "caa" else "head"
        dirs.append(
            write_run(
                root / f"boolq_{method}",
                scores,
                intervention=method,
                component=component,
                params=params,
                task="boolq",
            )
        )
    out = root / "report"
    assert main([*map(str, dirs), "--out", str(out), "--resamples", "200"]) == 0
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory() as profile:
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
        ):
            options.add_argument(arg)
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
        try:
            yield driver
        finally:
            driver.quit()


def full_page_screenshot(driver: Any, path: Path) -> None:
    """The whole page, not only the window (Chrome DevTools: capture beyond the viewport)."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def column(table: Any, index: int) -> list[str]:
    return [
        row.find_elements("css selector", "td")[index].text
        for row in table.find_elements("css selector", "tbody tr")
    ]


def leading(cells: list[str]) -> list[float]:
    """The leading number of each cell that has one ("+4.5 [+1.9, +7.2]" -> 4.5)."""
    return [float(m.group(0)) for c in cells if (m := NUMBER.match(c))]


def test_the_report_reads_and_sorts_in_a_browser(browser: Any, tmp_path: Path) -> None:
    """Title, the main table's header and the copa SADI row; every figure under a caption in
    words (never its file name) and loaded; a click on "delta report" sorts the rows by
    their delta, numerically, rows without one last; a second click reverses. Screenshot:
    test-artifacts/report.png (or $SADI_TEST_ARTIFACTS/report.png)."""
    out = two_task_report(tmp_path)
    browser.get((out / "report.html").as_uri())
    assert browser.title == "Steering report"
    (main_table, *others) = browser.find_elements("css selector", "table.sortable")
    assert others, "the pivot and other sections are tables too"
    head = [th.text for th in main_table.find_elements("css selector", "thead th")]
    assert head == COLUMNS
    rows = [
        [td.text for td in tr.find_elements("css selector", "td")]
        for tr in main_table.find_elements("css selector", "tbody tr")
    ]
    assert len(rows) == 8 and {r[0] for r in rows} == {"copa", "boolq"}
    cells = dict(zip(COLUMNS, next(r for r in rows if r[0] == "copa" and r[2] == "sadi-head")))
    assert cells["params"] == "k=4, strength=5.0"
    assert cells["report (steered)"].startswith("75.0 [")
    assert cells["report (baseline)"].startswith("60.0 [")
    assert cells["delta report"].startswith("+15.0 [+")
    assert cells["chosen by"] == "selection.json (6 points)"

    pngs = {p.name for p in out.glob("*.png")} | {p.stem for p in out.glob("*.png")}
    figures = browser.find_elements("css selector", "figure")
    assert len(figures) == len(list(out.glob("*.png"))) >= 5
    for fig in figures:
        caption = fig.find_element("css selector", "figcaption").text
        img = fig.find_element("css selector", "img")
        assert len(caption.split()) >= 6 and caption not in pngs and ".png" not in caption
        assert img.get_attribute("alt") == caption
        assert browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img
        )

    delta = COLUMNS.index("delta report")
    th = main_table.find_elements("css selector", "thead th")[delta]
    assert th.value_of_css_property("cursor") == "pointer"
    th.click()
    assert th.get_attribute("aria-sort") == "ascending"
    got = column(main_table, delta)
    values = leading(got)
    # five deltas; the two unsteered rows and CAA on copa (no samples) have none: last
    assert values == sorted(values) and len(values) == 5
    assert got[5:] == ["-", "-", "-"]
    assert values[0] < 0 < values[-1]  # boolq ITI loses, copa SADI gains most
    th.click()
    assert th.get_attribute("aria-sort") == "descending"
    again = leading(column(main_table, delta))
    assert again == sorted(values, reverse=True)
    method = main_table.find_elements("css selector", "thead th")[COLUMNS.index("method")]
    method.click()
    names = column(main_table, COLUMNS.index("method"))
    assert names == sorted(names, key=str.lower)

    browser.execute_script("window.scrollTo(0, 0)")
    shot = artifacts() / "report.png"
    full_page_screenshot(browser, shot)
    assert shot.stat().st_size > 10_000
