"""The MLflow callback: Ray imported only on first use; hooks that only queue, nothing lost."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


# One interpreter for both checks (each start imports torch and MLflow: seconds): first
# what importing the driver's modules loads, then the class that needs Ray.
_PROBE = """
import sys, pickle, sketchtune.callback as m, sketchtune.sweep
print("ray imported:", "ray" in sys.modules, flush=True)
from ray.tune import Callback
cls = m.MlflowSweepCallback
assert issubclass(cls, Callback) and m.MlflowSweepCallback is cls
# Tune pickles its callbacks with the experiment and restores them by name.
assert pickle.loads(pickle.dumps(cls)) is cls
print("class checked", flush=True)
"""


@pytest.fixture(scope="module")
def probe() -> subprocess.CompletedProcess:
    return _python(_PROBE)


@pytest.mark.slow
def test_callback_import_does_not_import_ray(probe):
    assert probe.stdout.splitlines()[:1] == ["ray imported: False"], probe.stderr[-2000:]


@pytest.mark.slow
def test_callback_class_is_a_tune_callback_built_once(probe):
    assert probe.returncode == 0 and "class checked" in probe.stdout, probe.stderr[-2000:]


# The callback's hooks called the way Tune calls them, without Ray: fake trials, a real
# MLflow sqlite store (tmp_path/mlflow.db, an empty one copied: conftest's mlflow_db).

def _describe(config: dict) -> dict:
    return {"candidate_id": "c0ffee", "backbone": "test_resnet", "fold": config["fold"],
            "train": {"optim": {"lr": 0.001}}}


def _setup(tmp_path: Path, n_trials: int):
    from sketchtune.callback import MlflowSweepCallback
    from sketchtune.store import PredictionStore
    from sketchtune.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "async")
    parent, _ = tracker.get_or_create_run("sweep", {}, {"sketchtune.role": "sweep"})
    cb = MlflowSweepCallback(tracker, parent, "cv", PredictionStore(tmp_path / "store"),
                             _describe)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"fold": i}, path=None)
              for i in range(n_trials)]
    return tracker, cb, trials


def _result(epoch: int) -> dict:
    return {"epoch": epoch, "val_acc": 0.5 + epoch / 100, "val_loss": 1.0, "train_loss": 2.0,
            "lr": 1e-3, "pid": 123, "timestamp": 0}


def _report(cb, trials, epochs: int) -> None:
    for t in trials:
        cb.on_trial_start(0, trials, t)
    for e in range(1, epochs + 1):  # interleaved, as concurrent trials report
        for t in trials:
            cb.on_trial_result(e, trials, t, _result(e))
    for t in trials:
        cb.on_trial_complete(epochs, trials, t)


def _history(tracker, cb, trials, key: str) -> list[list[int]]:
    return [[m.step for m in tracker.client.get_metric_history(cb.runs[t.trial_id], key)]
            for t in trials]


@pytest.mark.usefixtures("mlflow_db")
def test_callback_many_results_nothing_lost(tmp_path):
    tracker, cb, trials = _setup(tmp_path, n_trials=8)
    _report(cb, trials, epochs=10)
    cb.on_experiment_end(trials)
    for key in ("val_acc", "val_loss", "train_loss", "lr"):
        assert [sorted(h) for h in _history(tracker, cb, trials, key)] == \
            [list(range(1, 11))] * 8, key
    runs = [tracker.client.get_run(cb.runs[t.trial_id]) for t in trials]
    assert {r.info.status for r in runs} == {"FINISHED"} and not tracker.failures
    assert "pid" not in runs[0].data.metrics  # Ray's bookkeeping keys stay out
    tracker.close()


@pytest.mark.usefixtures("mlflow_db")
def test_callback_hooks_only_queue_and_stage_end_flushes(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    tracker, cb, trials = _setup(tmp_path, n_trials=4)
    gate, real = threading.Event(), MlflowClient.log_batch

    def gated(self, *args, **kwargs):
        gate.wait(60)  # a tracking server that has not answered yet
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", gated)
    _report(cb, trials, epochs=5)
    # Every hook returned while the server had answered nothing (the first run's params are
    # waiting): they only queued. 4 starts, 4 ends, and one send per trial for its 5 results
    # (a trial's waiting results go in one request).
    assert tracker.writer.pending == 4 + 4 + 4
    gate.set()
    cb.on_experiment_end(trials)  # the stage's end: everything written when it returns
    assert tracker.writer.pending == 0
    assert [sorted(h) for h in _history(tracker, cb, trials, "val_acc")] == [[1, 2, 3, 4, 5]] * 4
    tracker.close()


@pytest.mark.usefixtures("mlflow_db")
def test_callback_failing_server_counts_failures_and_never_raises(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    tracker, cb, trials = _setup(tmp_path, n_trials=3)

    def gone(self, *args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowClient, "log_batch", gone)
    _report(cb, trials, epochs=4)
    cb.on_trial_error(4, trials, trials[0])
    cb.on_experiment_end(trials)
    # Each trial's results were tried (some in one request when they waited together).
    assert 3 <= tracker.failures.count("log metrics") <= 3 * 4
    assert {"set tags"} <= set(tracker.failures)
    tracker.close()


@pytest.mark.usefixtures("mlflow_db")
def test_callback_retry_results_never_land_in_the_failed_attempt_run(tmp_path, monkeypatch):
    """Ray retries a failed trial under the same trial id while the writer is still behind:
    the failed attempt's epochs go to its FAILED run, the retry's to a run of its own."""
    from mlflow.tracking import MlflowClient

    tracker, cb, trials = _setup(tmp_path, n_trials=1)
    gate, real = threading.Event(), MlflowClient.log_batch

    def gated(self, *args, **kwargs):
        gate.wait(60)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", gated)
    (t,) = trials
    cb.on_trial_start(0, trials, t)
    cb.on_trial_result(1, trials, t, _result(1))
    cb.on_trial_result(2, trials, t, _result(2))
    cb.on_trial_recover(2, trials, t)
    cb.on_trial_start(2, trials, t)
    cb.on_trial_result(3, trials, t, _result(3))
    gate.set()
    cb.on_experiment_end(trials)
    runs = tracker.client.search_runs([tracker.experiment_id],
                                      filter_string="tags.ray_trial_id = 't0'")
    steps = {r.info.status: [m.step for m in tracker.client.get_metric_history(
        r.info.run_id, "val_acc")] for r in runs}
    assert steps == {"FAILED": [1, 2], "RUNNING": [3]}
    tracker.close()


@pytest.mark.usefixtures("mlflow_db")
def test_stage_end_closes_runs_a_killed_driver_left_open(tmp_path):
    # The first driver started four runs and was killed before its writer ended them; Tune had
    # saved t0 as finished and t1 as errored, so the restored stage never calls their hooks
    # again. Its callback (a fresh one, as restored) closes them at the stage's end; t2 (still
    # unfinished: Ctrl-C) stays open for the next resume, and t3 (ended) is left as it was.
    from sketchtune.callback import MlflowSweepCallback

    tracker, cb, trials = _setup(tmp_path, n_trials=4)
    for t in trials:
        cb.on_trial_start(0, trials, t)
        cb.on_trial_result(1, trials, t, _result(1))
    cb.on_trial_complete(1, trials, trials[3])
    tracker.flush()
    runs = dict(cb.runs)
    for t, status in zip(trials, ["TERMINATED", "ERROR", "RUNNING", "TERMINATED"], strict=True):
        t.status = status
    restored = MlflowSweepCallback(tracker, cb.parent, "cv", cb.store, _describe)
    restored.on_experiment_end(trials)
    status = {t.trial_id: tracker.client.get_run(runs[t.trial_id]).info.status for t in trials}
    assert status == {"t0": "FINISHED", "t1": "FAILED", "t2": "RUNNING", "t3": "FINISHED"}
    assert tracker.client.get_run(runs["t0"]).data.tags["stopped_by_scheduler"] == "true"
    assert not tracker.failures
    tracker.close()


@pytest.mark.usefixtures("mlflow_db")
def test_tracker_unpickles_to_this_process_live_tracker(tmp_path):
    """Tune pickles the callbacks into tuner.pkl and a resumed stage unpickles them: they must
    log through the sweep's own tracker (its queue and failure count)."""
    import pickle

    tracker, cb, _ = _setup(tmp_path, n_trials=1)
    assert pickle.loads(pickle.dumps(cb)).tracker is tracker
    # With no live tracker for that store and experiment (another process), a new one.
    data, uri, exp_id = pickle.dumps(tracker), tracker.tracking_uri, tracker.experiment_id
    del tracker, cb
    gc.collect()
    fresh = pickle.loads(data)
    assert (fresh.tracking_uri, fresh.experiment, fresh.experiment_id) == (uri, "async", exp_id)


@pytest.mark.usefixtures("mlflow_db")
def test_sweep_ctrl_c_writes_what_the_callback_queued_and_marks_the_sweep_killed(
        tiny_cfg, monkeypatch):
    """Tune stops a stage on Ctrl-C and the sweep raises KeyboardInterrupt: the metrics still
    queued (a slow server) are in MLflow when run_sweep has gone, and the parent run is
    KILLED. No Ray runs: the stage is replaced by one that calls the hooks as Tune does."""
    import time

    from mlflow.tracking import MlflowClient

    import sketchtune.sweep as sweep_mod
    from sketchtune.preflight import Preflight

    cfg, _ = tiny_cfg(**{"data.n_folds": 3})
    monkeypatch.setattr(sweep_mod, "preflight",
                        lambda *a, **k: Preflight(fixed=[], image_sizes=[], slots=1, tables=None,
                                                        started_ray=False))
    real = MlflowClient.log_batch

    def slow(self, *args, **kwargs):
        time.sleep(0.02)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", slow)
    trials = [SimpleNamespace(trial_id=f"t{k}", config={"job": {"params": {}, "fold": k}},
                              path=None) for k in range(3)]

    def interrupted_cv(cfg, chosen, callbacks, quiet, outcomes, tables=None):
        (cb,) = callbacks
        for t in trials:
            cb.on_trial_start(0, trials, t)
        for e in range(1, 6):
            for t in trials:
                cb.on_trial_result(e, trials, t, _result(e))
        raise KeyboardInterrupt  # what stages._fit raises when Tune stopped on Ctrl-C

    monkeypatch.setattr(sweep_mod, "run_cv", interrupted_cv)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run_sweep(cfg, quiet=True)
    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("sketchtune.role") == "sweep"]
    assert [r.info.status for r in parent] == ["KILLED"]
    cv = [r for r in runs if r.data.tags.get("stage") == "cv"]
    assert sorted(r.data.tags["fold"] for r in cv) == ["0", "1", "2"]
    for r in cv:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")] == \
            [1, 2, 3, 4, 5]


@pytest.mark.usefixtures("mlflow_db")
def test_callback_tags_each_run_with_the_node_its_trial_reports(tmp_path, monkeypatch):
    """node_id and node_ip from the trial's results become tags of its run: set once, again
    only when the trial reports another node; a result without them (an older trial) sets
    none."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from sketchtune.callback import _SweepLogger
    from sketchtune.store import PredictionStore
    from sketchtune.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "nodes")
    parent = tracker.client.create_run(tracker.experiment_id).info.run_id
    cb = _SweepLogger(tracker, parent, "cv", PredictionStore(tmp_path / "sweep"),
                      lambda cfg: {"candidate_id": "c1", "backbone": "test_resnet", "fold": 0})
    calls = []
    real = tracker.set_tags
    monkeypatch.setattr(tracker, "set_tags", lambda run, tags: (calls.append(tags),
                                                                 real(run, tags)))
    old, new = SimpleNamespace(trial_id="t-old", config={}), SimpleNamespace(trial_id="t",
                                                                             config={})
    cb.on_trial_result(0, [], old, {"epoch": 1, "val_acc": 0.5})
    for epoch, node in ((1, "aa"), (2, "aa"), (3, "bb")):
        cb.on_trial_result(0, [], new, {"epoch": epoch, "val_acc": 0.5, "node_id": node,
                                        "node_ip": "10.0.0.1"})
    tracker.flush()  # the hooks only queue; the writer thread makes the MLflow calls
    assert calls == [{"node_id": "aa", "node_ip": "10.0.0.1"},
                     {"node_id": "bb", "node_ip": "10.0.0.1"}]
    client = MlflowClient(uri)
    assert client.get_run(cb.runs["t"]).data.tags["node_id"] == "bb"
    assert "node_id" not in client.get_run(cb.runs["t-old"]).data.tags
