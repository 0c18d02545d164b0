"""Faults injected on purpose: crashed trials, a tracking server that goes away, a store that
cannot be written, untrusted files; and runs that repeat exactly."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from sketchtune.config import candidate_id, load_config
from sketchtune.errors import ConfigError, StoreError
from sketchtune.faults import ENV
from sketchtune.folds import make_folds
from sketchtune.prepare import prepare_data
from sketchtune.resume import load_state
from sketchtune.store import PredictionStore
from sketchtune.train import main as train_main
from sketchtune.train import run_trial

ROOT = Path(__file__).resolve().parent.parent


def cv_runs(cfg):
    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id], max_results=500)
    return runs, [r for r in runs if r.data.tags.get("stage") == "cv"]


def run_sweep_cli(path: Path, fault: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(ENV, None)
    if fault:
        env[ENV] = fault
    return subprocess.run([sys.executable, "-m", "sketchtune.sweep", str(path), "--quiet"],
                          env=env, cwd=path.parent, capture_output=True, text=True, timeout=400)


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*.tmp")]


@pytest.mark.usefixtures("mlflow_db")
@pytest.mark.slow
def test_crashed_trials_are_retried_and_their_failed_attempts_marked(tiny_cfg, tmp_path,
                                                                   monkeypatch):
    """At epoch 2 an exception in one trial, and in another the trial's process dying: Ray
    retries each. (Two faults in one sweep: which trial gets which is a race, so a trial may
    get both; `max_failures: 2` retries it twice.)"""
    import ray

    from sketchtune.sweep import main as sweep_main

    cfg, path = tiny_cfg(**{"data.n_folds": 2, "train.epochs": 3, "ray.max_failures": 2})
    # The CLI's main() in this process, on a Ray of its own that this process starts, so that
    # its workers inherit the faults (a second interpreter importing torch proved nothing more:
    # the trials are Ray workers either way, and `exit` kills one of them, not the driver).
    ray.shutdown()
    fired = [tmp_path / "raise-fired", tmp_path / "exit-fired"]
    monkeypatch.setenv(ENV, f"raise:2:{fired[0]};exit:2:{fired[1]}")
    try:
        assert sweep_main([str(path), "--quiet"]) == 0
    finally:
        ray.shutdown()
    assert all(f.exists() for f in fired)  # both faults really happened
    store = PredictionStore(cfg.sweep_dir)
    keys = pd.read_csv(cfg.data.folds_csv)["image_path"].tolist()
    assert store.completeness(candidate_id(cfg.train), keys)[0]
    assert no_temp_files(cfg.sweep_dir)
    _, cv = cv_runs(cfg)
    status = Counter(r.info.status for r in cv)
    assert status == {"FINISHED": 2, "FAILED": 2}, status
    # Each retry is a new run for the same (candidate, fold) and trial; the failed one stays.
    for failed in (r for r in cv if r.info.status == "FAILED"):
        same = [r for r in cv if r.data.tags["fold"] == failed.data.tags["fold"]]
        assert {r.info.status for r in same} == {"FAILED", "FINISHED"}
        assert len({r.data.tags["ray_trial_id"] for r in same}) == 1


@pytest.mark.slow
def test_trial_failing_every_retry_fails_the_sweep_with_one_line(tiny_cfg):
    cfg, path = tiny_cfg(**{"data.n_folds": 2, "ray": {"max_failures": 1, "verbose": 0}})
    done = run_sweep_cli(path, "raise:1:-")
    assert done.returncode == 1
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith("sketchtune.sweep: error:")
    assert "2 cv trial(s) failed after 1 retries" in err
    # The trial's own error, not Ray's wrapper of it, and once per cause, not per attempt.
    assert "InjectedFault: injected fault at epoch 1" in err and "ray::" not in err
    assert done.stderr.count("injected fault at epoch 1") == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stdout
    runs, cv = cv_runs(cfg)
    parent = next(r for r in runs if r.data.tags.get("sketchtune.role") == "sweep")
    assert parent.info.status == "FAILED"
    assert cv and all(r.info.status == "FAILED" for r in cv)
    assert PredictionStore(cfg.sweep_dir).candidates() == []  # nothing partial in the store


@pytest.mark.usefixtures("mlflow_db")
@pytest.mark.slow
def test_tracking_server_lost_mid_sweep_training_goes_on(tiny_cfg, monkeypatch, caplog):
    """MLflow goes away after the sweep started: every fold is still trained and stored, and
    one warning names what could not be logged."""
    import ray
    from mlflow.tracking import MlflowClient as Client

    from sketchtune.sweep import run_sweep

    cfg, _ = tiny_cfg(**{"data.n_folds": 2})
    real, calls = Client.log_batch, {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # the sweep's params got through; everything after fails
            raise ConnectionError("tracking server went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Client, "log_batch", flaky)
    try:
        with caplog.at_level(logging.WARNING):
            summaries = run_sweep(cfg, quiet=True)
    finally:
        ray.shutdown()
    assert [s.folds_done for s in summaries] == [2] and summaries[0].oof_acc is not None
    assert "tracking call(s) failed" in caplog.text and "log metrics" in caplog.text
    assert calls["n"] > 2
    # The metrics went through the writer thread: still one warning at the end, not one per
    # failed call.
    ends = [r for r in caplog.records if "tracking call(s) failed" in r.getMessage()]
    assert len(ends) == 1 and ends[0].levelno == logging.WARNING


def test_read_only_store_is_one_line_and_leaves_nothing(tiny_cfg, monkeypatch, capsys):
    cfg, path = tiny_cfg(save_weights=False)
    prepare_data(cfg, cfg.train.img_size)  # the folds file and image cache exist already

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("sketchtune.fs.os.replace", read_only)  # the store writes through it
    assert train_main([str(path), "--fold", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert "Read-only file system" in err and str(cfg.sweep_dir) in err
    assert not [p for p in cfg.sweep_dir.rglob("*") if p.is_file()]


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "state.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Payload()}, f)
    with pytest.raises(StoreError, match="refused"):
        load_state(path)
    assert not (tmp_path / "pwned").exists()
    # A real state dict of tensors and plain values loads.
    torch.save({"epoch": 3, "w": torch.ones(2)}, path)
    assert load_state(path)["epoch"] == 3


def test_yaml_with_python_tags_is_refused(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text(f"name: !!python/object/apply:os.system ['touch {tmp_path / 'pwned'}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_same_seed_same_folds_and_oof_predictions(tiny_cfg, tmp_path):
    cfg, _ = tiny_cfg(save_weights=False)
    train = pd.read_csv(cfg.data.train_csv)
    a, b = make_folds(train, 5, 42), make_folds(train.copy(), 5, 42)
    assert a.equals(b)
    outs = []
    for name in ("first", "second"):
        run = cfg.model_copy(update={"name": name})
        res = run_trial(run, cfg.train, 4)
        outs.append(PredictionStore(run.sweep_dir).read_fold(res.candidate_id, 4))
    assert outs[0].val_keys.tolist() == outs[1].val_keys.tolist()
    assert np.abs(outs[0].val_probs - outs[1].val_probs).max() < 1e-6
    assert np.abs(outs[0].test_probs - outs[1].test_probs).max() < 1e-6


@pytest.mark.slow
def test_failed_search_exits_1_with_root_cause_and_fixed_config_restarts(demo_dir, tmp_path):
    """Every search trial fails: exit 1, one line with the trial's own error (reported once,
    not per retry), no cv, no `next:`. The fixed config then runs in a new Ray experiment and
    a new parent MLflow run, quietly, and its hints work with a space in the path."""
    import shlex

    from tests.conftest import tiny_config_dict, write_config

    root = tmp_path / "my sweep"
    root.mkdir()
    space = {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}
    raw = tiny_config_dict(demo_dir, root, **{
        "data.n_folds": 2, "train.epochs": 1,
        "search": {"enabled": True, "num_samples": 1, "space": space}})
    path = write_config(root / "sweep.yaml", raw)
    cfg = load_config(path)

    failed = run_sweep_cli(path, "raise:1:-")
    assert failed.returncode == 1, failed.stderr[-2000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("sketchtune.sweep: error: search: none of its 1 trial(s)"), last
    assert "InjectedFault: injected fault at epoch 1" in last and "ray::" not in last
    # Two attempts (max_failures=1), one report of their common cause, and the last line.
    assert failed.stderr.count("injected fault at epoch 1") == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr and "next:" not in failed.stdout
    assert PredictionStore(cfg.sweep_dir).candidates() == []

    raw["search"]["num_samples"] = 2  # the fix changes a param the parent run logged
    write_config(path, raw)
    done = run_sweep_cli(path, None)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting a fresh experiment" in done.stderr
    assert "tracking call(s) failed" not in done.stderr
    # --quiet: no Ray token notice, no MLflow INFO chatter; warnings only.
    assert "Token authentication" not in done.stderr and " INFO " not in done.stderr
    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.name)
    parents = client.search_runs([exp.experiment_id], "tags.`sketchtune.role` = 'sweep'",
                                 order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in parents] == ["FAILED", "FINISHED"]
    assert parents[0].data.params["search.num_samples"] == "1"
    assert parents[1].data.params["search.num_samples"] == "2"
    lines = {ln.split(":", 1)[0]: ln for ln in done.stdout.splitlines() if ":" in ln}
    nxt = shlex.split(lines["next"].split(":", 1)[1])
    assert nxt[-1] == str(path), nxt
    ui = lines["predictions"].split("MLflow: ", 1)[1]
    assert shlex.split(ui)[:2] == ["cd", str(root)], ui
