"""The stage planner: one trial config shape, cv selection (top_k, ensemble), the cv jobs to run."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sketchtune.config import candidate_id, with_train_overrides
from sketchtune.job import job_of, trial_config
from sketchtune.planner import (
    Candidate,
    cv_candidates,
    cv_experiment_name,
    describe_trial,
    plan_cv_jobs,
    select_candidates,
    select_top,
)
from sketchtune.selection import greedy_members
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


def test_planner_plan_cv_jobs_counts_a_fold_done_only_with_every_prediction_set(tiny_cfg):
    # A config that stores views and EMA weights: a fold whose base candidate is in the store
    # but one of its sets is not (a view added to the config, a trial killed between writes)
    # is trained again; the trial's own check (store.trained) is the same one.
    cfg, _ = tiny_cfg(**{"data.n_folds": 2, "train.views": ["hflip"],
                         "train.ema": {"enabled": True}})
    c = Candidate({}, cfg.train, "base")
    store = PredictionStore(cfg.sweep_dir)
    p = np.full((1, 2), 0.5, dtype=np.float32)
    ids = [f"{c.id}", f"{c.id}-hflip", f"{c.id}-ema", f"{c.id}-ema-hflip"]
    for k, written in ((0, ids), (1, ids[:1] + ids[2:])):  # fold 1 lacks <id>-hflip
        for cid in written:
            store.write_fold(cid, k, val_keys=["x"], val_targets=np.array([0]), val_probs=p,
                             test_probs=p, test_keys=["t"], manifest={})
    assert [j["fold"] for j in plan_cv_jobs(cfg, [c], store)] == [1]
    assert store.trained(cfg.train, 0) and not store.trained(cfg.train, 1)
    assert store.trained_folds(cfg.train) == [0]


# ---------------------------------------------------------------- search.select: ensemble


def _rows(p_true: float, wrong: int, p_wrong: float, target: int, c: int = 3) -> np.ndarray:
    """One row of probabilities: p_true on `target`, p_wrong on class `wrong`, the rest even."""
    row = np.zeros(c, dtype=np.float32)
    row[target] = p_true
    row[wrong] = p_wrong
    rest = [k for k in range(c) if k not in (target, wrong)]
    row[rest] = (1.0 - p_true - p_wrong) / len(rest)
    return row


def _duplicates_and_a_diverse_one() -> tuple[np.ndarray, np.ndarray]:
    """probs (3, 30, 3), targets (30,): rows in three groups of 10, all of class 0.

    a: right on groups 1-2 (20/30), wrong on 3.  b: a's twin, a little less sure on group 2
    (20/30, higher log loss).  c: right on group 3 and half of group 1 (15/30), its errors
    unsure. a+b stays at 20/30; a+c gets all 30 right: the diverse pair.
    """
    y = np.zeros(30, dtype=np.int64)
    a = [_rows(0.6, 1, 0.2, 0)] * 20 + [_rows(0.2, 1, 0.6, 0)] * 10
    b = [_rows(0.6, 1, 0.2, 0)] * 10 + [_rows(0.55, 1, 0.25, 0)] * 10 + [_rows(0.2, 1, 0.6, 0)] * 10
    c = ([_rows(0.5, 1, 0.3, 0)] * 5 + [_rows(0.3, 2, 0.4, 0)] * 5 + [_rows(0.3, 2, 0.4, 0)] * 10
         + [_rows(0.9, 1, 0.05, 0)] * 10)
    return np.stack([np.stack(a), np.stack(b), np.stack(c)]), y


def test_selection_greedy_members_picks_the_diverse_pair():
    probs, y = _duplicates_and_a_diverse_one()
    assert greedy_members(probs, y, budget=2) == [0, 2]
    assert greedy_members(probs, y, budget=3) == [0, 2, 1]  # the twin last


def test_selection_greedy_members_fills_the_budget_when_one_candidate_dominates():
    y = np.zeros(10, dtype=np.int64)
    perfect = np.tile(_rows(0.9, 1, 0.05, 0), (10, 1))
    weak = np.tile(_rows(0.2, 1, 0.6, 0), (10, 1))
    weaker = np.tile(_rows(0.1, 1, 0.7, 0), (10, 1))
    probs = np.stack([weaker, perfect, weak])
    # Every round's best addition is `perfect` again; after max_rounds the rest fill in by gain.
    assert greedy_members(probs, y, budget=2, max_rounds=3) == [1, 2]
    assert greedy_members(probs, y, budget=5) == [1, 2, 0]  # never more than the pool


def test_selection_greedy_members_rejects_an_empty_budget():
    with pytest.raises(ValueError, match="budget must be at least 1 but got 0"):
        greedy_members(np.zeros((1, 2, 2)), np.zeros(2, dtype=np.int64), budget=0)


def _search_results_in_store(cfg, store, probs, y, accs, names=("a", "b", "c")):
    """Search results for candidates named by lr, with fold-0 predictions in the store."""
    keys = np.array([f"train/x/{i:03d}.JPEG" for i in range(len(y))])
    results = []
    for j, (acc, name) in enumerate(zip(accs, names, strict=True)):
        params = {"optim.lr": 1e-3 * (j + 1)}
        results.append(_result(params, epoch=3, best=acc))
        if probs is None or j >= len(probs):
            continue  # no prediction: a trial ASHA stopped
        cid = candidate_id(with_train_overrides(cfg.train, params, "t"))
        order = np.arange(len(y))[::-1] if name == "c" else np.arange(len(y))  # any row order
        t = np.zeros((1, probs.shape[2]), dtype=np.float32)
        store.write_fold(cid, 0, val_keys=list(keys[order]), val_targets=y[order],
                         val_probs=probs[j][order], test_probs=t, test_keys=["t"], manifest={})
    return results


def test_planner_select_ensemble_picks_the_diverse_pair_and_top_k_the_two_best(tiny_cfg):
    cfg, _ = tiny_cfg(**{"search.top_k_per_backbone": 2})
    store = PredictionStore(cfg.sweep_dir)
    probs, y = _duplicates_and_a_diverse_one()
    results = _search_results_in_store(cfg, store, probs, y, accs=(0.67, 0.66, 0.5))
    lrs = lambda cs: [c.params["optim.lr"] for c in cs]  # noqa: E731
    assert lrs(select_candidates(cfg, results, store)) == [1e-3, 2e-3]  # top_k, the default
    ens = tiny_cfg(**{"search.top_k_per_backbone": 2, "search.select": "ensemble"})[0]
    chosen = select_candidates(ens, results, store)
    assert lrs(chosen) == [1e-3, 3e-3] and {c.origin for c in chosen} == {"search"}
    wider = tiny_cfg(**{"search.top_k_per_backbone": 2, "search.select": "ensemble",
                        "search.budget": 3})[0]
    assert lrs(select_candidates(wider, results, store)) == [1e-3, 3e-3, 2e-3]


def test_planner_select_ensemble_fills_the_budget_from_the_ranking(tiny_cfg):
    cfg, _ = tiny_cfg(**{"search.top_k_per_backbone": 2, "search.select": "ensemble"})
    store = PredictionStore(cfg.sweep_dir)
    probs, y = _duplicates_and_a_diverse_one()
    # Only `c` finished (has a fold-0 prediction); a and b were stopped: ranked order fills.
    results = _search_results_in_store(cfg, store, probs[2:], y, accs=(0.5, 0.67, 0.66),
                                       names=("c", "a", "b"))
    chosen = select_candidates(cfg, results, store)
    assert [c.params["optim.lr"] for c in chosen] == [1e-3, 2e-3]
    # Nothing finished at all: the ranking alone, as top_k would rank.
    bare = tiny_cfg(**{"search.top_k_per_backbone": 2, "search.select": "ensemble",
                       "storage_path": str(cfg.sweep_dir.parent / "empty")})[0]
    got = select_candidates(bare, results, PredictionStore(bare.sweep_dir))
    assert [c.params["optim.lr"] for c in got] == [2e-3, 3e-3]
