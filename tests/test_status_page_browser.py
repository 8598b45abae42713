"""The status page in a real browser (headless Chromium, Selenium) against a real sinagotd:
the grid, a filter, a cell's detail, and a live update when a new recording lands. Its
screenshot is kept in `test-artifacts/` (or `$SINAGOT_ARTIFACTS`).

Skipped, with the reason in pytest's summary, only where Chromium cannot be installed;
`.ci/run` installs it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, missing
from test_daemon import make_count_fail_for, write_record
from test_status_page import poll

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SINAGOT_ARTIFACTS", ROOT / "test-artifacts"))

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"BROWSER TEST NOT RUN: {missing()}")


def until(what: Callable[[], Any], timeout: float = 10.0, why: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = what()
        except Exception:  # an element replaced while looked at: look again
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {why}")
        time.sleep(0.05)


def statuses(driver) -> dict[tuple[str, str], str]:
    return {
        (cell.get_attribute("data-record"), cell.get_attribute("data-step")):
            cell.get_attribute("data-status")
        for cell in driver.find_elements("css selector", "#grid .cell")
    }  # fmt: skip


def test_a_person_sees_the_failure_opens_it_and_watches_a_new_record_arrive(ws, sinagotd):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    make_count_fail_for(ws, "REC-20200602", "no boats on 2020-06-02")
    daemon = sinagotd(ws, settle=1.0)
    base = daemon.wait_for("daemon.started")["status_page"]
    daemon.wait_for("daemon.idle")
    poll(base, "api/status", lambda a: a["counts"]["failed"] == 1)

    driver = chromium()
    try:
        driver.get(base)
        grid = until(lambda: len(statuses(driver)) == 6 and statuses(driver), why="the grid")
        assert grid[("REC-20200602", "count")] == "ERROR"
        assert grid[("REC-20200601", "mean")] == "DONE"
        failed = driver.find_element("css selector", '#counts [data-count="failed"]')
        assert failed.text == "1"
        cells = driver.find_elements("css selector", "#grid .cell")
        rows = [cell.get_attribute("data-record") for cell in cells]
        assert list(dict.fromkeys(rows)) == ["REC-20200601", "REC-20200602", "REC-20200603"]

        Select(driver.find_element("id", "show")).select_by_value("failed")
        until(lambda: {r for r, _ in statuses(driver)} == {"REC-20200602"}, why="the filter")
        assert "show=failed" in driver.current_url  # a view can be shared

        driver.find_element("css selector", '#grid .cell[data-status="ERROR"]').click()
        detail = until(lambda: driver.find_element("id", "detail-step"), why="the detail")
        until(lambda: "no boats on 2020-06-02" in detail.text, why="the error in the detail")
        assert driver.find_element("id", "detail").get_attribute("hidden") is None
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "status-page-detail.png"))
        driver.find_element("tag name", "body").send_keys(Keys.ESCAPE)
        until(lambda: driver.find_element("id", "detail").get_attribute("hidden") is not None,
              why="Esc closes the detail")  # fmt: skip

        Select(driver.find_element("id", "show")).select_by_value("all")
        until(lambda: len(statuses(driver)) == 6, why="all rows again")
        write_record(ws, "REC-20200604")
        landed = time.monotonic()
        until(lambda: ("REC-20200604", "count") in statuses(driver), timeout=5.0,
              why="the new record on the page, without a reload")  # fmt: skip
        assert time.monotonic() - landed < 3.0
        until(lambda: statuses(driver).get(("REC-20200604", "mean")) == "DONE", timeout=30,
              why="the new record done")  # fmt: skip
        driver.save_screenshot(str(ARTIFACTS / "status-page.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # no script error, no CSP violation, nothing fetched amiss
    finally:
        driver.quit()
