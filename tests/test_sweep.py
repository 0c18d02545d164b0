"""The sweep through real Ray Tune and real MLflow (a temporary sqlite store), on the demo data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sketchtune.cluster import start_ray
from sketchtune.config import candidate_id, with_train_overrides
from sketchtune.store import PredictionStore
from sketchtune.sweep import main, run_sweep
from sketchtune.train import run_trial

ROOT = Path(__file__).resolve().parent.parent
RAY_KEYS = {"pid", "timestamp", "time_this_iter_s", "training_iteration", "time_total_s"}


@pytest.fixture(autouse=True)
def _ray_shutdown():
    yield
    import ray

    ray.shutdown()


def runs_of(cfg):
    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.name)
    return client, client.search_runs([exp.experiment_id], max_results=500)


def train_keys(cfg) -> list[str]:
    return pd.read_csv(cfg.data.folds_csv)["image_path"].tolist()


@pytest.mark.slow
def test_sweep_smoke_search_then_cv_tracked_in_mlflow(finished_sweep):
    """The session's sweep (tests/conftest.py: finished_sweep): a search over two backbones
    and the learning rate on one fold, then cv of the top config per backbone and of two
    fixed candidates, through the CLI."""
    cfg = finished_sweep.cfg
    assert cfg.data.n_folds == 2 and cfg.train.epochs == 2
    assert cfg.search.num_samples == 3 and cfg.search.grace_period == 1
    assert finished_sweep.rc == 0, finished_sweep.err[-3000:]
    out = finished_sweep.out
    assert "oof_acc" in out and "mlflow ui" in out

    client, runs = runs_of(cfg)
    parents = [r for r in runs if r.data.tags.get("sketchtune.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    trials = [r for r in runs if r.data.tags.get("stage") in ("search", "cv")]
    assert trials and all(r.data.tags["mlflow.parentRunId"] == parent for r in trials)
    assert len([r for r in trials if r.data.tags["stage"] == "search"]) == 3
    for r in trials:
        assert {"candidate_id", "backbone", "fold", "ray_trial_id"} <= set(r.data.tags)
        assert r.info.status == "FINISHED"
        assert {"val_acc", "val_loss", "train_loss", "lr"} <= set(r.data.metrics)
        assert not RAY_KEYS & set(r.data.metrics) and not any(
            k.startswith("config/") for k in r.data.metrics)
        assert r.data.params["model.name"] == r.data.tags["backbone"]
    # Per-epoch history: a trial that ran both epochs has two val_acc points.
    cv = [r for r in trials if r.data.tags["stage"] == "cv"]
    assert cv and all(len(client.get_metric_history(r.info.run_id, "val_acc")) >= 1 for r in cv)
    artifacts = {a.path for a in client.list_artifacts(cv[0].info.run_id)}
    assert {"config.yaml", "training_curve.png"} <= artifacts
    # Finished trials' Ray checkpoints are released to stubs: the store holds what is worth
    # keeping.
    states = list((cfg.sweep_dir / "ray").glob("*/trial_*/checkpoint_*/state.pt"))
    assert states and all(p.stat().st_size < 2000 for p in states)

    # Every chosen candidate is complete in the store, and its folds point at their runs.
    store = PredictionStore(cfg.sweep_dir)
    summaries = [r for r in runs if r.data.tags.get("stage") == "summary"]
    assert summaries
    run_ids = {r.info.run_id for r in trials}
    for s in summaries:
        cid = s.data.tags["candidate_id"]
        assert store.completeness(cid, train_keys(cfg))[0]
        assert 0 <= s.data.metrics["oof_acc"] <= 1
        for k in range(cfg.data.n_folds):
            assert store.read_manifest(cid, k)["mlflow_run_id"] in run_ids
    # A search trial that trained every epoch wrote its fold-0 predictions, even where ASHA's
    # last rung sits on that epoch (max_t 2, grace 1, factor 2: rungs at 1 and 2) and cut it
    # there (sketchtune.asha.FinishingASHA).
    search = [r for r in trials if r.data.tags["stage"] == "search"]
    full = [r for r in search if len(client.get_metric_history(r.info.run_id, "val_acc")) == 2]
    assert full and all(store.has_fold(r.data.tags["candidate_id"], cfg.search.fold)
                        for r in full)
    # One summary per backbone that the search tried (top-1 per backbone), and one per fixed
    # candidate besides.
    fixed = {candidate_id(with_train_overrides(cfg.train, c, "t")) for c in cfg.candidates}
    assert len(fixed) == 2
    chosen = [s for s in summaries if s.data.tags["candidate_id"] not in fixed]
    backbones = {r.data.tags["backbone"] for r in trials if r.data.tags["stage"] == "search"}
    assert {s.data.tags["backbone"] for s in chosen} == backbones
    assert fixed <= {s.data.tags["candidate_id"] for s in summaries}


@pytest.mark.usefixtures("mlflow_db")
@pytest.mark.slow
def test_sweep_cv_skips_pairs_already_in_the_store(tiny_cfg):
    # One epoch: what is skipped does not depend on how long a fold trains.
    cfg, _ = tiny_cfg(**{"data.n_folds": 2, "train.epochs": 1})
    cid = candidate_id(cfg.train)
    run_trial(cfg, cfg.train, 0)  # fold 0 trained outside the sweep
    store = PredictionStore(cfg.sweep_dir)
    before = store.read_manifest(cid, 0)["train_seconds"]

    import ray

    # One Ray for both sweeps: run_sweep uses a Ray this process has started and leaves it
    # running (preflight), so the second sweep skips a start-up that proves nothing here.
    start_ray(cfg, quiet=True)
    try:
        run_sweep(cfg, quiet=True)
        assert store.read_manifest(cid, 0)["train_seconds"] == before
        _, runs = runs_of(cfg)
        cv = [r for r in runs if r.data.tags.get("stage") == "cv"]
        assert [r.data.tags["fold"] for r in cv] == ["1"]

        # Adding a candidate and running again trains only the new candidate's folds.
        new = {"optim.lr": 1e-3}
        cfg2 = cfg.model_copy(update={"candidates": [{}, new]})
        run_sweep(cfg2, quiet=True)
        _, runs = runs_of(cfg)
        cv = Counter((r.data.tags["candidate_id"], r.data.tags["fold"]) for r in runs
                     if r.data.tags.get("stage") == "cv")
        new_id = candidate_id(with_train_overrides(cfg.train, new, "t"))
        assert cv == {(cid, "1"): 1, (new_id, "0"): 1, (new_id, "1"): 1}
        assert store.completeness(new_id, train_keys(cfg))[0]
    finally:
        ray.shutdown()


def _manifests(sweep_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(sweep_dir)): p.read_text()
            for p in sorted((sweep_dir / "candidates").glob("*/fold*.json"))}


@pytest.mark.usefixtures("mlflow_db")
@pytest.mark.slow
def test_sweep_resumes_after_driver_sigkill(tiny_cfg):
    """kill -9 of the sweep's driver mid-cv; the same command finishes the sweep without
    training a finished fold again or duplicating an MLflow run, and ends with the predictions
    of a sweep never interrupted."""
    # Two candidates x three folds: six trials, the kill after three leaves some running and
    # some not started (five folds proved nothing more and trained 24 more trials in all).
    # This size also caught a race of the resume: a run whose trial Tune had saved as finished
    # stayed RUNNING in 2 of 4 runs, until the stage's end closed such runs (fe385a1); 3 of 3
    # passed after.
    cfg, path = tiny_cfg(**{"train.epochs": 3, "data.n_folds": 3,
                            "candidates": [{}, {"optim.lr": 1e-3}]})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sketchtune.sweep", str(path), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, cwd=path.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(_manifests(cfg.sweep_dir)) < 3:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # kill -9 of the driver: no chance to clean up
    proc.wait()
    before = _manifests(cfg.sweep_dir)
    assert 3 <= len(before) < 6

    done = subprocess.run(cmd, env=env, cwd=path.parent, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _manifests(cfg.sweep_dir)
    assert len(after) == 6
    # Folds finished before the kill were not trained again (their manifests only gain the
    # MLflow run id if the kill came between the fold and its logging).
    for name, text in before.items():
        old, new = json.loads(text), json.loads(after[name])
        new_run = new.pop("mlflow_run_id")
        assert old.pop("mlflow_run_id") in (None, new_run)
        assert old == new

    _, runs = runs_of(cfg)
    cv = Counter((r.data.tags["candidate_id"], r.data.tags["fold"]) for r in runs
                 if r.data.tags.get("stage") == "cv")
    assert len(cv) == 6 and set(cv.values()) == {1}, "an MLflow run was duplicated"
    assert all(r.info.status == "FINISHED" for r in runs), [
        (r.info.run_name, r.info.status, dict(r.data.tags)) for r in runs
        if r.info.status != "FINISHED"]
    assert len([r for r in runs if r.data.tags.get("sketchtune.role") == "sweep"]) == 1

    # The killed-and-resumed sweep ends with the same predictions as one never interrupted.
    # That one runs in this process (the CLI path is what the two runs above proved): its
    # trials train in Ray workers all the same, without a third driver's start-up.
    run_sweep(cfg.model_copy(update={"name": "straight"}), quiet=True)
    resumed_store = PredictionStore(cfg.sweep_dir)
    straight_store = PredictionStore(cfg.storage_path / "straight")
    assert resumed_store.candidates() == straight_store.candidates()
    for cid in resumed_store.candidates():
        for k in range(3):
            a, b = resumed_store.read_fold(cid, k), straight_store.read_fold(cid, k)
            assert a.val_keys.tolist() == b.val_keys.tolist()
            assert np.abs(a.val_probs - b.val_probs).max() < 1e-6
            assert np.abs(a.test_probs - b.test_probs).max() < 1e-6


def test_sweep_bad_search_key_fails_before_any_trial(tiny_cfg, capsys):
    cfg, path = tiny_cfg(**{"search": {"enabled": True, "space": {
        "optim.lrr": {"type": "uniform", "low": 0.1, "high": 0.2}}}})
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "optim.lrr" in err and str(path) in err and "\n" not in err
    assert not cfg.sweep_dir.exists()


def test_sweep_unknown_backbone_fails_before_any_trial(tiny_cfg, capsys):
    cfg, path = tiny_cfg(**{"candidates": [{"model.name": "resnet_9000"}]})
    assert main([str(path), "--quiet"]) == 2
    assert "resnet_9000" in capsys.readouterr().err
    assert not cfg.sweep_dir.exists()


def test_sweep_impossible_resources_fail_before_any_trial(tiny_cfg, capsys):
    cfg, path = tiny_cfg(**{"resources": {"cpu": 1, "gpu": 1}})
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "resources.gpu" in err and "no trial could ever start" in err
    assert not (cfg.sweep_dir / "candidates").exists()


def test_sweep_unreachable_tracking_server_fails_before_any_trial(tiny_cfg, capsys):
    cfg, path = tiny_cfg(tracking_uri="http://127.0.0.1:9")  # discard port: nothing listens
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "MLflow is not reachable" in err and "127.0.0.1:9" in err
    assert not cfg.sweep_dir.exists()


def test_sweep_unreachable_ray_head_fails_at_once(tiny_cfg, capsys):
    cfg, path = tiny_cfg(**{"ray": {"address": "127.0.0.1:9", "verbose": 0}})
    t0 = time.time()
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ray.address='127.0.0.1:9'" in err and "ray start --head" in err and "\n" not in err
    assert time.time() - t0 < 60 and not (cfg.sweep_dir / "candidates").exists()
