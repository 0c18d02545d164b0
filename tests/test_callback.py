"""The MLflow callback module: Ray is imported only when the callback class is first used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_callback_import_does_not_import_ray():
    done = _python("import sys, sketchtune.callback, sketchtune.sweep\n"
                   "assert 'ray' not in sys.modules, 'ray was imported'\n")
    assert done.returncode == 0, done.stderr[-2000:]


def test_callback_class_is_a_tune_callback_built_once():
    done = _python("import pickle, sketchtune.callback as m\n"
                   "from ray.tune import Callback\n"
                   "cls = m.MlflowSweepCallback\n"
                   "assert issubclass(cls, Callback) and m.MlflowSweepCallback is cls\n"
                   # Tune pickles its callbacks with the experiment and restores them by name.
                   "assert pickle.loads(pickle.dumps(cls)) is cls\n")
    assert done.returncode == 0, done.stderr[-2000:]


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
    assert calls == [{"node_id": "aa", "node_ip": "10.0.0.1"},
                     {"node_id": "bb", "node_ip": "10.0.0.1"}]
    client = MlflowClient(uri)
    assert client.get_run(cb.runs["t"]).data.tags["node_id"] == "bb"
    assert "node_id" not in client.get_run(cb.runs["t-old"]).data.tags
