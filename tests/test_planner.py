"""The stage planner: one trial config shape, top-k selection, the cv jobs still to run."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from sketchtune.config import candidate_id, with_train_overrides
from sketchtune.planner import (
    Candidate,
    cv_candidates,
    cv_experiment_name,
    describe_trial,
    job_of,
    plan_cv_jobs,
    select_top,
    trial_config,
)
from sketchtune.store import PredictionStore


def _result(params, epoch, best, error=None):
    return SimpleNamespace(config=trial_config(params, 0), error=error,
                           metrics={"epoch": epoch, "best_val_acc": best})


def test_planner_trial_config_round_trips_through_describe(tiny_cfg):
    cfg, _ = tiny_cfg()
    config = trial_config({"optim.lr": 1e-3}, 3)
    assert job_of(config) == {"params": {"optim.lr": 1e-3}, "fold": 3}
    d = describe_trial(cfg, config)
    want = with_train_overrides(cfg.train, {"optim.lr": 1e-3}, "t")
    assert d["candidate_id"] == candidate_id(want) and d["fold"] == 3
    assert d["backbone"] == "test_convnext" and d["train"]["optim"]["lr"] == 1e-3


def test_planner_select_top_ranks_further_trials_first_and_skips_failures(tiny_cfg):
    cfg, _ = tiny_cfg(**{"search.top_k_per_backbone": 2})
    results = [
        _result({"optim.lr": 1e-3}, epoch=1, best=0.9),  # stopped early: ranks last
        _result({"optim.lr": 2e-3}, epoch=3, best=0.5),
        _result({"optim.lr": 3e-3}, epoch=3, best=0.6),
        _result({"optim.lr": 3e-3}, epoch=3, best=0.6),  # the same candidate again
        _result({"optim.lr": 4e-3}, epoch=3, best=0.99, error=RuntimeError("failed")),
        _result({"model.name": "test_resnet"}, epoch=2, best=0.1),
    ]
    top = select_top(cfg, results)
    assert [(c.backbone, c.params) for c in top] == [
        ("test_convnext", {"optim.lr": 3e-3}), ("test_convnext", {"optim.lr": 2e-3}),
        ("test_resnet", {"model.name": "test_resnet"})]
    assert {c.origin for c in top} == {"search"}


def test_planner_cv_candidates_base_only_without_search_or_fixed(tiny_cfg):
    cfg, _ = tiny_cfg()
    base = cv_candidates(cfg, None, [])
    assert [(c.origin, c.id) for c in base] == [("base", candidate_id(cfg.train))]
    assert cv_candidates(cfg, [], []) == []  # a search that chose nothing: no base
    fixed = Candidate({}, cfg.train, "fixed")
    searched = Candidate({}, cfg.train, "search")
    assert cv_candidates(cfg, [searched], [fixed]) == [searched]  # one id, once


def test_planner_plan_cv_jobs_skips_folds_in_the_store(tiny_cfg):
    cfg, _ = tiny_cfg(**{"data.n_folds": 3})
    a = Candidate({}, cfg.train, "base")
    b_train = with_train_overrides(cfg.train, {"optim.lr": 1e-3}, "t")
    b = Candidate({"optim.lr": 1e-3}, b_train, "fixed")
    store = PredictionStore(cfg.sweep_dir)
    p = np.full((1, 2), 0.5, dtype=np.float32)
    store.write_fold(a.id, 1, val_keys=["x"], val_targets=np.array([0]), val_probs=p,
                     test_probs=p, test_keys=["t"], manifest={})
    jobs = plan_cv_jobs(cfg, [a, b], store)
    assert [(j["params"], j["fold"]) for j in jobs] == [
        ({}, 0), ({}, 2), ({"optim.lr": 1e-3}, 0), ({"optim.lr": 1e-3}, 1),
        ({"optim.lr": 1e-3}, 2)]
    # The cv experiment is named after the candidate set, whatever its order.
    assert cv_experiment_name([a, b]) == cv_experiment_name([b, a]) != cv_experiment_name([a])
