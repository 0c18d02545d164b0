"""README pictures from a finished demo run: `scripts/make_pictures.sh` (runs the demo first).

Copies the ensemble search's plots, downloads one cv trial's training curve from MLflow, and
screenshots the MLflow UI (the sweep's run expanded, its trials, their val_acc) with the
same browser code the UI test uses (tests/browser.py), so the picture shows what CI proves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from sketchtune.config import SweepConfig, load_config

# One PNG, no progress bar.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

PLOTS = ("correlation.png", "model_acc.png", "error_overlap.png")  # ensemble_search.optimize's
METRICS = ("val_loss", "oof_acc")  # besides val_acc, which the UI test also checks
PARAMS = ("optim.lr", "loss.gamma")  # two of configs/sweep.yaml's search dimensions
SIZE = (1400, 900)  # the README shows it scaled down; text stays legible at half size


def copy_plots(cfg: SweepConfig, out: Path) -> list[Path]:
    src = cfg.sweep_dir / "ensemble"
    missing = [p for p in PLOTS if not (src / p).is_file()]
    if missing:
        raise FileNotFoundError(f"{src}: no {', '.join(missing)}; run "
                                "`python -m ensemble_search.optimize` (scripts/demo.sh does)")
    return [Path(shutil.copyfile(src / p, out / p)) for p in PLOTS]


def best_trial_run(client: MlflowClient, experiment_id: str):
    """Fold 0 of the candidate with the best OOF accuracy: a cv run, else its search run.

    A search trial that ran to its last epoch is that candidate's fold (the cv stage reuses
    it), so the curve may live on the search run.
    """
    runs = client.search_runs([experiment_id], max_results=1000)
    summaries = sorted((r for r in runs if r.data.tags.get("stage") == "summary"),
                       key=lambda r: -r.data.metrics.get("oof_acc", -1.0))
    order = [s.data.tags["candidate_id"] for s in summaries]
    trials = [r for r in runs if r.data.tags.get("stage") in ("cv", "search")
              and r.data.tags.get("candidate_id") in order]

    def rank(r):
        return (order.index(r.data.tags["candidate_id"]), r.data.tags.get("stage") != "cv",
                r.data.tags.get("fold") != "0", r.info.run_name)

    for r in sorted(trials, key=rank):
        if any(a.path == "training_curve.png" for a in client.list_artifacts(r.info.run_id)):
            return r
    raise LookupError(f"experiment {experiment_id}: no cv or search run of a complete "
                      "candidate has a training_curve.png artifact")


def training_curve(client: MlflowClient, experiment_id: str, out: Path) -> Path:
    run = best_trial_run(client, experiment_id)
    with tempfile.TemporaryDirectory() as d:
        got = client.download_artifacts(run.info.run_id, "training_curve.png", d)
        dst = Path(shutil.copyfile(got, out / "training_curve.png"))
    print(f"training curve: run {run.info.run_name} ({run.info.run_id})")
    return dst


def mlflow_screenshot(cfg: SweepConfig, experiment_id: str, out: Path) -> Path:
    """The runs table: the sweep's run expanded to its trials, with val_acc and oof_acc."""
    from tests.browser import (
        chrome,
        expand_run,
        mlflow_ui,
        open_runs,
        show_metric,
        tidy_for_screenshot,
        toggle_columns,
        widen_column,
    )

    parent = f"sweep-{cfg.name}"
    dst = out / "mlflow_runs.png"
    with mlflow_ui(cfg.tracking_uri) as url, chrome(*SIZE) as driver:
        open_runs(driver, url, experiment_id, parent, oldest_first=True)
        tidy_for_screenshot(driver, hide_sidebar=True)
        expand_run(driver, parent, "cv-")
        show_metric(driver, "val_acc")
        # oof_acc is on the per-candidate summary runs; the two params are searched ones.
        # Dataset, Source and Models are empty for a sweep: their room goes to the run names.
        toggle_columns(driver, [*METRICS, *PARAMS, "Dataset", "Source", "Models"])
        widen_column(driver, "attributes.`Run Name`", 200)
        driver.save_screenshot(str(dst))
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/make_pictures.py", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", nargs="?", default="configs/sweep.yaml", help="the demo's sweep YAML")
    p.add_argument("--out", type=Path, default=Path("docs/images"), help="folder for the PNGs")
    args = p.parse_args(argv)
    from tests.browser import browser_missing

    why = browser_missing()
    if why:
        print(f"error: the MLflow screenshot needs a browser: {why}", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.name)
    if exp is None:
        print(f"error: {cfg.tracking_uri} has no experiment {cfg.name!r}; run scripts/demo.sh "
              "first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        made = copy_plots(cfg, args.out)
        made.append(training_curve(client, exp.experiment_id, args.out))
    except (FileNotFoundError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    made.append(mlflow_screenshot(cfg, exp.experiment_id, args.out))
    for path in made:
        print(f"{path}  {path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
