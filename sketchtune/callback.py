"""The sweep's MLflow writer: a Ray Tune callback on the driver; runs are found after a restart.

Ray is imported on first use of `MlflowSweepCallback` (a module `__getattr__` builds the
class then), so importing this module costs no Ray import (seconds), as for sweep.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoint import release_checkpoints
from .store import PredictionStore
from .tracking import METRIC_KEYS, Tracker, flatten

__all__ = ["MlflowSweepCallback"]  # noqa: F822 - made by __getattr__ on first use

NODE_KEYS = ("node_id", "node_ip")  # where a trial ran: result keys, MLflow tags, manifest fields


class _SweepLogger:
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
            self._tag_node(run_id, result)

    def _tag_node(self, run_id: str, result: dict[str, Any]) -> None:
        """Tag the run with the node its trial reports (`trainable.node_of_this_worker`), once
        per run and again only if it moves (a run continued after a driver restart)."""
        node = result.get("node_id")
        # setdefault: a callback unpickled from an experiment saved before this field existed.
        tagged = self.__dict__.setdefault("node_of_run", {})
        if node and tagged.get(run_id) != node:
            self.tracker.set_tags(run_id, {k: str(result.get(k, "")) for k in NODE_KEYS})
            tagged[run_id] = node

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_for(trial)
        if run_id is not None:
            self._log_complete(trial, run_id)
        release_checkpoints(trial.path)

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


def _build() -> type:
    from ray.tune import Callback

    class MlflowSweepCallback(_SweepLogger, Callback):
        __doc__ = _SweepLogger.__doc__

    # Found by name again when Tune unpickles its experiment state on a restore.
    MlflowSweepCallback.__module__ = __name__
    MlflowSweepCallback.__qualname__ = "MlflowSweepCallback"
    return MlflowSweepCallback


def __getattr__(name: str) -> Any:
    if name == "MlflowSweepCallback":
        cls = globals()[name] = _build()  # built once; later lookups find it in globals
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
