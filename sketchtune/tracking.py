"""MLflow tracking for a sweep: one writer on the Ray driver, runs found again after a restart."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from .store import PredictionStore

__all__ = [
    "METRIC_KEYS",
    "MlflowSweepCallback",
    "TrackingError",
    "Tracker",
    "check_tracking",
    "flatten",
]

_log = logging.getLogger(__name__)

# The flat metric names logged per epoch; Ray's bookkeeping keys (pid, timestamp, ...) are not.
METRIC_KEYS = ("train_loss", "val_loss", "val_acc", "lr", "images_per_s", "epoch_time_s",
               "best_val_acc")

PARENT_TAG = "sketchtune.role"


class TrackingError(RuntimeError):
    """The tracking server cannot be used; one-line message."""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def _artifact_root(tracking_uri: str) -> str | None:
    # With a sqlite store, keep artifacts beside the database (MLflow's own layout,
    # <root>/mlruns) rather than under whatever the working directory happens to be.
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlruns")
    return None


def check_tracking(tracking_uri: str) -> None:
    """Fail fast, before any trial, when the tracking store cannot be reached."""
    if tracking_uri.startswith(("http://", "https://")):
        # One quick try instead of MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as err:  # the client raises many types: connection, sqlalchemy, MLflow
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise TrackingError(f"tracking_uri {tracking_uri!r}: MLflow is not reachable ({first})") \
            from None


class Tracker:
    """A thin, failure-tolerant wrapper of MlflowClient for one experiment.

    Every call after the start-up check is best effort: when the server goes away in the
    middle of a sweep, training goes on and the calls that failed are counted and named.
    """

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=_art(tracking_uri, experiment))
        else:
            self.experiment_id = exp.experiment_id
        self.failures: list[str] = []

    def safe(self, what: str, fn, *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            if not self.failures:
                _log.warning("MLflow: could not %s (%s); training goes on", what,
                             str(err).splitlines()[0][:120] if str(err) else type(err).__name__)
            self.failures.append(what)
            return None

    def find_run(self, **tags: str) -> Any:
        filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=filt,
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def get_or_create_run(self, name: str, tags: dict[str, str], key: dict[str, str],
                          reuse_failed: bool = False) -> tuple[str, bool]:
        """The run whose tags match `key`, unless it failed; else a new one. (run_id, created)."""
        run = self.find_run(**key)
        if run is not None and (reuse_failed or run.info.status not in ("FAILED", "KILLED")):
            return run.info.run_id, False
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, **key})
        return run.info.run_id, True

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self.safe("log metrics", self.client.log_batch, run_id, metrics=batch)

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.safe("log params", self.client.log_batch, run_id, params=items[i:i + 100])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.safe("set tags", self.client.log_batch, run_id,
                  tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.safe("end a run", self.client.set_terminated, run_id, status)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.safe("log an artifact", self.client.log_artifact, run_id, str(path), artifact_path)


def _art(tracking_uri: str, experiment: str) -> str | None:
    root = _artifact_root(tracking_uri)
    return None if root is None else f"{root}/{experiment}"


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
        if run_id is None:
            return
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

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.runs.pop(trial.trial_id, None)
        if run_id is not None:
            self.tracker.set_tags(run_id, {"error": "trial raised; Ray may retry it"})
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

