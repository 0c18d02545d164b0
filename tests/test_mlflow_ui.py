"""A user's first look at a sweep: `mlflow ui` in headless Chromium shows the runs we logged."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from sketchtune.sweep import run_sweep
from tests.browser import browser_missing, chrome, expand_run, mlflow_ui, open_runs, show_metric

MISSING = browser_missing()
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


@pytest.fixture(scope="module", autouse=True)
def _ray_shutdown():
    yield
    import ray

    ray.shutdown()


def _cells(driver, col_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.text.strip() for c in driver.find_elements(
        By.XPATH, f"//div[@role='gridcell'][@col-id='{col_id}']")]


def _links(driver, prefix: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [a.text.strip() for a in driver.find_elements(
        By.XPATH, f"//div[@role='gridcell']//a[starts-with(normalize-space(), '{prefix}')]")]


@pytest.mark.usefixtures("mlflow_db")
def test_mlflow_ui_shows_the_sweep_its_trials_and_val_acc(tiny_cfg, tmp_path):
    # Two fixed candidates x two folds, one epoch: four cv trials under one sweep run.
    cfg, _ = tiny_cfg(**{"data.n_folds": 2, "train.epochs": 1,
                         "candidates": [{}, {"optim.lr": 1e-3}]})
    run_sweep(cfg, quiet=True)
    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id])
    cv = {r.info.run_name: r.data.metrics["val_acc"] for r in runs
          if r.data.tags.get("stage") == "cv"}
    assert len(cv) == 4 and all(name.startswith("cv-") for name in cv)
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
