"""A user's first look at a sweep: `mlflow ui` in headless Chromium shows the runs we logged."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from sketchtune.config import candidate_id, with_train_overrides
from tests.browser import browser_missing, chrome, expand_run, mlflow_ui, open_runs, show_metric

MISSING = browser_missing()
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def _cells(driver, col_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.text.strip() for c in driver.find_elements(
        By.XPATH, f"//div[@role='gridcell'][@col-id='{col_id}']")]


def _links(driver, prefix: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [a.text.strip() for a in driver.find_elements(
        By.XPATH, f"//div[@role='gridcell']//a[starts-with(normalize-space(), '{prefix}')]")]


def test_mlflow_ui_shows_the_sweep_its_trials_and_val_acc(finished_sweep, tmp_path):
    # The session's sweep (tests/conftest.py: finished_sweep): its two fixed candidates x two
    # folds are four cv trials under one sweep run, beside the search's and its choices'.
    cfg = finished_sweep.cfg
    assert finished_sweep.rc == 0, finished_sweep.err[-3000:]
    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id])
    cv_runs = [r for r in runs if r.data.tags.get("stage") == "cv"]
    cv = {r.info.run_name: r.data.metrics["val_acc"] for r in cv_runs}
    fixed = {candidate_id(with_train_overrides(cfg.train, c, "t")) for c in cfg.candidates}
    assert len(fixed) == 2
    assert len([r for r in cv_runs if r.data.tags["candidate_id"] in fixed]) == 4
    assert len(cv) == len(cv_runs) and all(name.startswith("cv-") for name in cv)
    parent = f"sweep-{cfg.name}"

    with mlflow_ui(cfg.tracking_uri) as url, chrome(1400, 900) as driver:
        open_runs(driver, url, exp.experiment_id, parent)
        assert _links(driver, parent) == [parent]
        assert _links(driver, "cv-") == [], "child runs should start collapsed under the sweep"

        expand_run(driver, parent, "cv-")
        assert sorted(_links(driver, "cv-")) == sorted(cv)

        show_metric(driver, "val_acc")
        # The column holds what the sweep logged: each trial's last val_acc.
        shown = {round(float(t), 4) for t in _cells(driver, "metrics.`val_acc`")
                 if t not in ("", "-")}
        assert {round(v, 4) for v in cv.values()} <= shown

        png = tmp_path / "mlflow_ui.png"
        assert driver.save_screenshot(str(png))
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
