"""The sweep's MLflow writer: a Ray Tune callback on the driver; runs are found after a restart."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from .store import PredictionStore
from .tracking import METRIC_KEYS, Tracker, flatten

__all__ = ["MlflowSweepCallback"]


class MlflowSweepCallback(Callback):
    """Logs every trial as a child run of the sweep's parent run, from the driver only.

    A run is found again by its Ray trial id, so a resumed sweep continues the runs it has
    instead of making new ones; a retried attempt after a failure gets a fresh run, and the
    failed one is marked FAILED.
    """

    def __init__(self, tracker: Tracker, parent_run_id: str, stage: str, store: PredictionStore,
                 describe: Callable[[dict[str, Any]], dict[str, Any]]):
        self.tracker, self.parent, self.stage, self.store = tracker, parent_run_id, stage, store
        # describe(trial.config) -> {candidate_id, backbone, fold, train (resolved config)}
        self.describe = describe
        self.runs: dict[str, str] = {}  # ray trial id -> mlflow run id
        self.history: dict[str, list[dict[str, float]]] = {}

    def _run_for(self, trial) -> str | None:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        cfg = self.describe(trial.config)
        key = {"ray_trial_id": trial.trial_id, "sketchtune.stage": self.stage}
        tags = {
            "mlflow.parentRunId": self.parent,
            "candidate_id": cfg.get("candidate_id", ""),
            "backbone": cfg.get("backbone", ""),
            "fold": str(cfg.get("fold", "")),
            "stage": self.stage,
        }
        name = "-".join([self.stage, cfg.get("backbone", ""), cfg.get("candidate_id", ""),
                         f"f{cfg.get('fold')}"])
        res = self.tracker.safe("start a run", self.tracker.get_or_create_run, name, tags, key)
        if res is None:
            return None
        run_id, created = res
        if created:
            self.tracker.log_params(run_id, flatten(cfg.get("train", {})))
        self.runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("skipped"):
            return
        run_id = self._run_for(trial)
        self.history.setdefault(trial.trial_id, []).append(
            {k: result[k] for k in (*METRIC_KEYS, "epoch") if k in result})
        if run_id is not None:
            metrics = {k: result[k] for k in METRIC_KEYS if k in result}
            self.tracker.log_metrics(run_id, metrics, step=int(result.get("epoch", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_for(trial)
        if run_id is not None:
            self._log_complete(trial, run_id)
        _drop_checkpoints(trial)

    def _log_complete(self, trial, run_id: str) -> None:
        cfg = self.describe(trial.config)
        cid, fold = cfg.get("candidate_id"), cfg.get("fold")
        if cid and fold is not None and self.store.has_fold(cid, int(fold)):
            manifest = self.store.update_manifest(cid, int(fold), mlflow_run_id=run_id)
            history = manifest.get("history") or self.history.get(trial.trial_id)
            self._log_files(run_id, cfg, history)
            self.tracker.set_tags(run_id, {"best_epoch": manifest.get("best_epoch"),
                                           "predictions": str(self.store.candidate_dir(cid))})
        else:
            # Stopped by the scheduler (ASHA) before its last epoch: no predictions.
            self.tracker.set_tags(run_id, {"stopped_by_scheduler": "true"})
        self.tracker.end(run_id, "FINISHED")

    def on_trial_recover(self, iteration, trials, trial, **info):
        # Failed, and Ray retries it from its last checkpoint: this attempt's run ends FAILED
        # and the retry gets a run of its own.
        self._fail(trial, "failed; Ray retries it from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._fail(trial, "failed after every retry (FailureConfig.max_failures)")

    def _fail(self, trial, why: str) -> None:
        run_id = self.runs.pop(trial.trial_id, None)
        if run_id is not None:
            self.tracker.set_tags(run_id, {"error": why})
            self.tracker.end(run_id, "FAILED")

    def _log_files(self, run_id: str, cfg: dict, history: list[dict] | None) -> None:
        import yaml

        from .plots import plot_training_curve

        with tempfile.TemporaryDirectory() as tmp:
            cfg_path = Path(tmp) / "config.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg.get("train", {}), sort_keys=True))
            self.tracker.log_artifact(run_id, cfg_path)
            if history:
                png = Path(tmp) / "training_curve.png"
                self.tracker.safe("plot", plot_training_curve, history, png,
                                  title=f"{cfg.get('backbone')} {cfg.get('candidate_id')} "
                                        f"fold {cfg.get('fold')}")
                if png.exists():
                    self.tracker.log_artifact(run_id, png)


RELEASED = "released"  # the key of the stub that replaces a finished trial's checkpoint


def _drop_checkpoints(trial) -> None:
    """Replace a finished trial's Ray checkpoint state with a few-byte stub.

    A checkpoint holds the model, the optimizer state and the best weights, about 4x the
    model's size (1.6 GB for caformer_b36). A trial that ran to the end has its predictions
    and best weights in the store; one that ASHA stopped is never continued. The folder
    stays: if the driver dies before Tune records the trial as finished, a restart restores
    the trial from this folder, finds its fold in the store and trains nothing (or, for a
    stopped trial, sees the stub and starts it afresh).
    """
    import torch

    path = trial.path
    if not (path and os.path.isdir(path)):  # cloud storage: left to Ray
        return
    for state in Path(path).glob("checkpoint_*/state.pt"):
        stub = state.with_name(".state.pt.tmp")
        torch.save({RELEASED: True}, stub)
        os.replace(stub, state)
