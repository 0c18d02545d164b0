"""The MLflow UI in headless Chromium: start `mlflow ui`, open a sweep's runs, screenshot it.

Shared by the browser test (tests/test_mlflow_ui.py) and the README pictures
(docs/make_pictures.py), so the picture shows exactly what the test proves. The UI is a
React app (ag-grid tables, Du Bois components); the selectors below lean on what a user
sees (link text, button labels, column titles) and on ag-grid's ARIA roles, not on the
generated CSS class names, which change with every MLflow build.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package
CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian's `chromium-driver` package
# Headless on a closed network: no GPU, no sandbox (root in a container), and none of the
# background connections (updates, sync) that would otherwise hang or spam the log.
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-dev-shm-usage")
TIMEOUT = 60.0  # seconds; the first render of the React app takes 10-20 s on 2 busy cores

__all__ = ["browser_missing", "chrome", "expand_run", "mlflow_ui", "open_runs", "show_metric",
           "tidy_for_screenshot", "toggle_columns", "widen_column"]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return (f"{' and '.join(missing)} not found: apt-get install chromium chromium-driver "
                "(.ci/run does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_ui(backend_store_uri: str, timeout: float = 90.0) -> Iterator[str]:
    """`mlflow ui` on a free local port for the block; yields its base URL, then stops it.

    The server runs in its own process group (uvicorn, a job runner and its consumers are
    children of it), so the whole group is stopped at the end, test failure or not.
    """
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")  # the venv's, beside this python
    cmd = [str(mlflow), "ui", "--backend-store-uri", backend_store_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # Run it beside a sqlite store, so whatever it writes in its working directory stays there.
    cwd = (Path(backend_store_uri.removeprefix("sqlite:///")).parent
           if backend_store_uri.startswith("sqlite:///") else None)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"mlflow ui exited with {proc.returncode}: "
                                   f"{log.read().decode(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow ui did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@contextmanager
def chrome(width: int = 1400, height: int = 900) -> Iterator[object]:
    """Headless Chromium through chromedriver, with a fresh profile and a fixed viewport."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for arg in (*CHROME_ARGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
        try:
            # --window-size includes the (invisible) browser frame; pin the page's viewport so
            # a screenshot is exactly width x height.
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            yield driver
        finally:
            driver.quit()


def _text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait(driver, what: str, cond, timeout: float = TIMEOUT):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(cond)
    except TimeoutException:
        raise TimeoutError(f"MLflow UI: {what} within {timeout:.0f} s; the page said: "
                           f"{_text(driver)[:1500]!r}") from None


def open_runs(driver, base_url: str, experiment_id: str, run_name: str,
              oldest_first: bool = False) -> None:
    """Open the experiment's runs table (not the GenAI start page) and wait for `run_name`.

    `oldest_first` sorts by start time, ascending, through the URL the Sort menu writes: the
    sweep's run (the oldest) comes first, the runs of later ensemble searches last.
    """
    query = "?orderByKey=attributes.start_time&orderByAsc=true" if oldest_first else ""
    driver.get(f"{base_url}/#/experiments/{experiment_id}/runs{query}")
    _wait(driver, f"no run named {run_name!r} in the runs table",
          lambda d: run_name in _text(d))


def _xpath_literal(s: str) -> str:
    assert "'" not in s, s  # run names here are ours: [a-z0-9_-]
    return f"'{s}'"


def expand_run(driver, run_name: str, child_prefix: str) -> None:
    """Click the expander beside a parent run's name; wait until a child `child_prefix*` shows.

    The expander is the only button in the parent's Run Name grid cell (a +/- icon).
    """
    from selenium.webdriver.common.by import By

    cell = (f"//div[@role='gridcell'][.//a[normalize-space()={_xpath_literal(run_name)}]]")
    button = _wait(driver, f"no expander beside {run_name!r}",
                   lambda d: d.find_element(By.XPATH, f"{cell}//button"))
    button.click()
    _wait(driver, f"no child run {child_prefix}* after expanding {run_name!r}",
          lambda d: d.find_elements(
              By.XPATH, f"//div[@role='gridcell']//a[starts-with(normalize-space(), "
                        f"{_xpath_literal(child_prefix)})]"))


def _column_header(key: str) -> str:
    # ag-grid's col-id is MLflow's own column key (`metrics.`val_acc``), stable across builds.
    return f"//div[@role='columnheader'][@col-id={_xpath_literal(key)}]"


def toggle_columns(driver, names: list[str]) -> None:
    """Tick or untick columns (metric, param or attribute names) in the Columns menu."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.XPATH, "//button[normalize-space()='Columns']").click()
    search = _wait(driver, "no column search box",
                   lambda d: d.find_element(By.XPATH, "//input[@placeholder='Search columns']"))
    for name in names:
        search.send_keys(Keys.CONTROL, "a")
        search.send_keys(name)  # narrows the tree to a few entries: no scrolling needed
        # The search highlights matches as <strong>, so match the entry by its whole text.
        entry = f"//*[contains(@class, 'tree-title')][normalize-space()={_xpath_literal(name)}]"
        _wait(driver, f"no column {name!r} in the Columns menu",
              lambda d, e=entry: d.find_element(By.XPATH, e)).click()
    search.send_keys(Keys.ESCAPE)


def show_metric(driver, metric: str) -> None:
    """Add a metric's column through the Columns menu, as a user would; wait for its header."""
    from selenium.webdriver.common.by import By

    toggle_columns(driver, [metric])
    header = _column_header(f"metrics.`{metric}`")

    def shown(d) -> bool:
        if d.find_elements(By.XPATH, header):
            return True
        # ag-grid renders only the columns in view and adds new ones at the right end.
        d.execute_script(_SCROLL_RIGHT)
        return False

    _wait(driver, f"no {metric!r} column header", shown)


_SCROLL_RIGHT = """
for (const el of document.querySelectorAll('.ag-body-horizontal-scroll-viewport')) {
  el.scrollLeft = el.scrollWidth;
}"""


def widen_column(driver, key: str, by_px: int) -> None:
    """Drag a column's resize handle, e.g. widen `attributes.`Run Name`` so names fit."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    handle = driver.find_element(
        By.XPATH, f"{_column_header(key)}/div[contains(@class, 'ag-header-cell-resize')]")
    ActionChains(driver).click_and_hold(handle).move_by_offset(by_px, 0).release().perform()


def tidy_for_screenshot(driver, hide_sidebar: bool = False) -> None:
    """Close the MLflow Assistant panel (a third of a 1400 px window); optionally the sidebar.

    Both buttons carry hand-written `data-component-id`s (not the generated `codegen_*` ones),
    the most stable handles the UI has; a missing button is left alone.
    """
    from selenium.webdriver.common.by import By

    ids = ["mlflow.assistant.chat_panel.close"]
    if hide_sidebar:
        ids.append("mlflow_header.toggle_sidebar_button")
    for cid in ids:
        for b in driver.find_elements(By.CSS_SELECTOR, f"button[data-component-id='{cid}']")[:1]:
            b.click()
