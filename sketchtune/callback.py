"""The sweep's MLflow writer: a Ray Tune callback whose hooks only queue; runs survive a restart.

Ray is imported on first use of `MlflowSweepCallback` (a module `__getattr__` builds the
class then), so importing this module costs no Ray import (seconds), as for sweep.py.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .resume import release_checkpoints
from .store import PredictionStore
from .tracking import METRIC_KEYS, Tracker, flatten

__all__ = ["MlflowSweepCallback"]  # noqa: F822 - made by __getattr__ on first use

NODE_KEYS = ("node_id", "node_ip")  # where a trial ran: result keys, MLflow tags, manifest fields


class _SweepLogger:
    """Logs every trial as a child run of the sweep's parent run, from the driver only.

    A run is found again by its Ray trial id, so a resumed sweep continues the runs it has
    instead of making new ones; a retried attempt after a failure gets a fresh run, and the
    failed one is marked FAILED. The MLflow calls run on the tracker's writer thread
    (`Tracker.submit`); the hooks return at once, and the stage's end flushes them.
    """

    def __init__(self, tracker: Tracker, parent_run_id: str, stage: str, store: PredictionStore,
                 describe: Callable[[dict[str, Any]], dict[str, Any]]):
        self.tracker, self.parent, self.stage, self.store = tracker, parent_run_id, stage, store
        # describe(trial.config) -> {candidate_id, backbone, fold, train (resolved config)}
        self.describe = describe
        self.runs: dict[str, str] = {}  # ray trial id -> mlflow run id
        self.history: dict[str, list[dict[str, float]]] = {}
        self._setup_queue()

    def _setup_queue(self) -> None:
        # Results not yet sent, per trial, with the time each arrived (ms): when the writer is
        # behind (a slow server), one request sends all of a trial's waiting epochs, so its
        # throughput grows with the backlog instead of the backlog growing without end.
        self._unsent: dict[str, list[tuple[int, dict[str, float]]]] = {}
        self._lock = threading.Lock()  # _unsent is shared by the driver and the writer thread

    # Tune pickles its callbacks with the experiment (tuner.pkl); a lock cannot be pickled.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_unsent", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup_queue()

    # Tune calls these hooks on its driver loop, between scheduling steps, for every epoch of
    # every trial: one MLflow round trip each (up to 1 s on a remote server) made that loop the
    # sweep's ceiling. So each hook only queues its work on the tracker's writer thread, which
    # runs it in order; the Trial's fields are read now, on the driver.

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.submit("start a run", self._run_for, trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("skipped"):
            return
        row = {k: result[k] for k in (*METRIC_KEYS, "epoch", *NODE_KEYS) if k in result}
        with self._lock:
            waiting = self._unsent.get(trial.trial_id)
            first = waiting is None
            if first:
                waiting = self._unsent[trial.trial_id] = []
            waiting.append((int(time.time() * 1000), row))
        if first:  # else the send already queued for this list takes this row too
            self.tracker.submit("log metrics", self._send_results, trial.trial_id,
                                trial.config, waiting)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.submit("finish a run", self._complete, trial.trial_id, trial.config)
        storage = getattr(trial, "storage", None)  # Ray's StorageContext: where the trial is
        release_checkpoints(trial.path, getattr(storage, "storage_filesystem", None))

    def on_trial_recover(self, iteration, trials, trial, **info):
        # Failed, and Ray retries it from its last checkpoint: this attempt's run ends FAILED
        # and the retry gets a run of its own.
        self._end_attempt(trial.trial_id, "failed; Ray retries it from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end_attempt(trial.trial_id, "failed after every retry (FailureConfig.max_failures)")

    def _end_attempt(self, trial_id: str, why: str) -> None:
        # This attempt's unsent results go with its FAILED mark, so that a retry's results
        # (same trial id) cannot join a send queued before and land in the failed run.
        with self._lock:
            waiting = self._unsent.pop(trial_id, [])
        self.tracker.submit("end a failed run", self._fail, trial_id, why, waiting)

    def on_experiment_end(self, trials, **info):
        # A driver killed after Tune saved a trial as finished but before the writer ended its
        # run leaves that run RUNNING, and the restored Tune never calls on_trial_complete for
        # the trial again. So the stage's end closes every run still open whose trial is done.
        done = [(t.trial_id, t.config, t.status) for t in trials
                if getattr(t, "status", None) in ("TERMINATED", "ERROR")]
        self.tracker.submit("close runs left open", self._close_open_runs, done)
        # The stage is over (or Tune stopped it on Ctrl-C): its records are in MLflow before
        # the next stage or the sweep's summary runs.
        self.tracker.flush()

    # The rest runs on the writer thread only, one call at a time: no locks needed but the one
    # around _unsent, which the driver fills.

    def _run_for(self, trial_id: str, config: dict[str, Any]) -> str | None:
        if trial_id in self.runs:
            return self.runs[trial_id]
        cfg = self.describe(config)
        key = {"ray_trial_id": trial_id, "sketchtune.stage": self.stage}
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
        self.runs[trial_id] = run_id
        return run_id

    def _send_results(self, trial_id: str, config: dict[str, Any],
                      waiting: list[tuple[int, dict[str, float]]]) -> None:
        run_id = self._run_for(trial_id, config)
        # Whoever takes the list out of _unsent sends it; once out, the driver starts a new one.
        with self._lock:
            if self._unsent.get(trial_id) is not waiting:
                return  # taken by _end_attempt: they go to the failed attempt's run
            del self._unsent[trial_id]
        self._log_waiting(trial_id, run_id, waiting)

    def _log_waiting(self, trial_id: str, run_id: str | None,
                     waiting: list[tuple[int, dict[str, float]]]) -> None:
        self.history.setdefault(trial_id, []).extend(
            {k: v for k, v in row.items() if k not in NODE_KEYS} for _, row in waiting)
        if run_id is not None and waiting:
            self.tracker.log_steps(run_id, [
                (ts, int(row.get("epoch", 0)), {k: v for k, v in row.items() if k in METRIC_KEYS})
                for ts, row in waiting])
            for _, row in waiting:  # tags only when the node changes: no call for most rows
                self._tag_node(run_id, row)

    def _complete(self, trial_id: str, config: dict[str, Any]) -> None:
        run_id = self._run_for(trial_id, config)
        if run_id is not None:
            self._log_complete(trial_id, config, run_id)

    def _close_open_runs(self, done: list[tuple[str, dict[str, Any], str]]) -> None:
        # Queued after every hook of this stage, so a run this driver ended is no longer open.
        if not done:
            return
        found = self.tracker.safe("find open runs", self.tracker.open_runs,
                                  **{"mlflow.parentRunId": self.parent,
                                     "sketchtune.stage": self.stage})
        open_run = {r.data.tags.get("ray_trial_id"): r.info.run_id for r in found or []}
        for trial_id, config, status in done:
            run_id = open_run.get(trial_id)
            if run_id is None:
                continue
            if status == "TERMINATED":
                self.runs[trial_id] = run_id
                self._log_complete(trial_id, config, run_id)
            else:
                self.tracker.set_tags(run_id, {"error": "failed after every retry (its end "
                                               "was not recorded before the driver stopped)"})
                self.tracker.end(run_id, "FAILED")

    def _tag_node(self, run_id: str, row: dict[str, Any]) -> None:
        """Tag the run with the node its trial reports (`trainable.node_of_this_worker`), once
        per run and again only if it moves (a run continued after a driver restart)."""
        node = row.get("node_id")
        # setdefault: a callback unpickled from an experiment saved before this field existed.
        tagged = self.__dict__.setdefault("node_of_run", {})
        if node and tagged.get(run_id) != node:
            self.tracker.set_tags(run_id, {k: str(row.get(k, "")) for k in NODE_KEYS})
            tagged[run_id] = node

    def _log_complete(self, trial_id: str, config: dict[str, Any], run_id: str) -> None:
        cfg = self.describe(config)
        cid, fold = cfg.get("candidate_id"), cfg.get("fold")
        if cid and fold is not None and self.store.has_fold(cid, int(fold)):
            manifest = self.store.update_manifest(cid, int(fold), mlflow_run_id=run_id)
            history = manifest.get("history") or self.history.get(trial_id)
            self._log_files(run_id, cfg, history)
            self.tracker.set_tags(run_id, {"best_epoch": manifest.get("best_epoch"),
                                           "predictions": str(self.store.candidate_dir(cid))})
        else:
            # Stopped by the scheduler (ASHA) before its last epoch: no predictions.
            self.tracker.set_tags(run_id, {"stopped_by_scheduler": "true"})
        self.tracker.end(run_id, "FINISHED")

    def _fail(self, trial_id: str, why: str,
              waiting: list[tuple[int, dict[str, float]]]) -> None:
        run_id = self.runs.pop(trial_id, None)
        self._log_waiting(trial_id, run_id, waiting)
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
