"""Ensemble methods and their registry: facts that hold by construction."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from ensemble_search.comparison import compare_methods, flat_metrics
from ensemble_search.correlation import corr_from_gram, fold_gram
from ensemble_search.greedy import greedy_log_loss, greedy_reference, select_accuracy
from ensemble_search.load import OOFSet
from ensemble_search.methods import (
    METHODS,
    BestSingle,
    EnsembleMethod,
    GreedyEnsemble,
    MeanEnsemble,
    OptimizedEnsemble,
    PrunedEnsemble,
    apply_temperature,
    auto_methods,
    build_method,
    reported_methods,
    unregister,
)
from ensemble_search.metrics import log_loss, true_class_probs
from ensemble_search.nested import honest_estimate
from ensemble_search.oofview import OOFView
from sketchtune.config import EnsembleConfig
from tests.ensemble_fixtures import make_probs, softmax


@pytest.mark.parametrize("metric", ["log_loss", "acc"])
@pytest.mark.parametrize("sorted_init", [0, 2])
def test_greedy_fast_equals_reference_on_random_data(metric, sorted_init):
    rng = np.random.default_rng(7)
    for _ in range(8):
        m, n, c = int(rng.integers(2, 7)), int(rng.integers(20, 120)), int(rng.integers(2, 9))
        probs, y = make_probs(rng, list(rng.uniform(0, 2, m)), n, c)
        probs = softmax(np.log(probs) * rng.uniform(0.3, 3))  # vary sharpness
        fast = (greedy_log_loss(true_class_probs(probs, y), 12, sorted_init) if metric == "log_loss"
                else select_accuracy(OOFView(probs, y), 12, sorted_init))
        assert fast == greedy_reference(probs, y, 12, metric, sorted_init)


@pytest.mark.parametrize("metric", ["log_loss", "acc"])
def test_greedy_finds_planted_best_and_ignores_useless(metric):
    rng = np.random.default_rng(0)
    n, c = 300, 5
    probs, y = make_probs(rng, [0.3, 3.0, 0.3], n, c)  # candidate 1 is far better
    wrong = np.zeros((n, c), dtype=np.float32)
    wrong[np.arange(n), (y + 1) % c] = 1.0  # confidently wrong on every row
    probs = np.concatenate([probs, wrong[None]])
    g = GreedyEnsemble(iterations=10, metric=metric).fit(probs, y)
    assert g.selection_[0] == 1
    assert g.weights_[3] == 0.0
    assert g.weights_[1] == g.weights_.max()


def test_methods_weights_nonnegative_and_sum_to_one():
    rng = np.random.default_rng(1)
    probs, y = make_probs(rng, [1.0, 0.8, 0.2, 1.5], 200, 6)
    for method in [MeanEnsemble(), GreedyEnsemble(), GreedyEnsemble(sorted_init=2, bagging=4),
                   GreedyEnsemble(metric="acc"), OptimizedEnsemble(temperature=True),
                   PrunedEnsemble(0.3), PrunedEnsemble(0.99, then="greedy"),
                   METHODS["best_single"]()]:
        w = method.fit(probs, y).weights_
        assert w.shape == (4,)
        assert (w >= 0).all(), method
        assert w.sum() == pytest.approx(1.0, abs=1e-12), method
        pred = method.predict_proba(probs)
        assert np.allclose(pred.sum(axis=1), 1.0, atol=1e-5)


def test_optimized_never_worse_than_mean():
    rng = np.random.default_rng(2)
    for trial in range(10):
        m = int(rng.integers(1, 6))
        probs, y = make_probs(rng, list(rng.uniform(-0.5, 2, m)), 80, 5)
        mean = log_loss(MeanEnsemble().fit(probs, y).predict_proba(probs), y)
        opt = log_loss(OptimizedEnsemble().fit(probs, y).predict_proba(probs), y)
        assert opt <= mean + 1e-12, trial


def test_optimized_temperature_never_raises_log_loss():
    rng = np.random.default_rng(3)
    probs, y = make_probs(rng, [0.5, 0.5], 200, 5)
    probs = softmax(np.log(probs) * 4)  # overconfident: a temperature > 1 helps
    plain = OptimizedEnsemble().fit(probs, y)
    temp = OptimizedEnsemble(temperature=True).fit(probs, y)
    assert temp.temperature_ > 1.0
    assert log_loss(temp.predict_proba(probs), y) < log_loss(plain.predict_proba(probs), y)
    assert np.array_equal(apply_temperature(probs[0], 1.0), probs[0])


def test_pruned_drops_duplicate_of_better_candidate():
    rng = np.random.default_rng(4)
    probs, y = make_probs(rng, [2.0, 1.0, 0.5], 150, 5)
    probs = np.concatenate([probs, probs[1:2]])  # candidate 3 copies candidate 1 (worse than 0)
    p = PrunedEnsemble(threshold=0.99).fit(probs, y)
    assert 1 in p.kept_ and 3 not in p.kept_
    assert p.weights_[3] == 0.0


class _Spy(MeanEnsemble):
    seen: list[np.ndarray] = []

    def fit(self, probs, targets, corr=None):
        _Spy.seen.append(probs[0, :, 0].copy())  # the row ids planted below
        return super().fit(probs, targets, corr)


def test_nested_estimate_never_sees_held_out_fold():
    n, c = 40, 3
    probs = np.full((2, n, c), 0.25, dtype=np.float32)
    probs[:, :, 0] = np.arange(n) / 1000.0  # plant each row's index in class 0
    probs[:, :, 1] = 0.5 - probs[:, :, 0]
    folds = np.arange(n) % 4
    y = np.zeros(n, dtype=np.int64)
    _Spy.seen = []
    honest_estimate(probs, y, folds, {"spy": _Spy})
    assert len(_Spy.seen) == 4
    for k, seen in enumerate(_Spy.seen):
        rows = np.rint(seen * 1000).astype(int)
        assert set(rows) == set(np.flatnonzero(folds != k))


def test_nested_estimate_scores_held_out_fold_with_other_folds_weights():
    # Candidate 0 is perfect on fold 0 only and hopeless elsewhere; candidate 1 is decent
    # everywhere. Weights fitted without fold 0 must pick candidate 1 for fold 0.
    rng = np.random.default_rng(5)
    n, c = 120, 4
    folds = np.arange(n) % 3
    probs, y = make_probs(rng, [0.0, 1.5], n, c)
    onehot = np.eye(c, dtype=np.float32)[y] * 0.96 + 0.01
    probs[0] = np.where((folds == 0)[:, None], onehot, np.eye(c, dtype=np.float32)[(y + 1) % c]
                        * 0.96 + 0.01)
    res = honest_estimate(probs, y, folds, {"greedy": GreedyEnsemble})["greedy"]
    assert res.fold_weights[0][0] == 0.0
    held = folds == 0
    expected = float((probs[1, held].argmax(axis=1) == y[held]).mean())
    assert res.fold_acc[0] == pytest.approx(expected)


def test_methods_reject_bad_arguments():
    with pytest.raises(ValueError, match="iterations"):
        GreedyEnsemble(iterations=0)
    with pytest.raises(ValueError, match="metric"):
        GreedyEnsemble(metric="f1")
    with pytest.raises(ValueError, match="threshold"):
        PrunedEnsemble(threshold=2.0)


def test_fold_gram_correlation_equals_direct_on_other_folds():
    rng = np.random.default_rng(6)
    probs, _ = make_probs(rng, [1.0, 0.5, 0.0], 90, 4)
    folds = np.arange(90) % 3
    gram, sums = fold_gram(probs, folds, rows=7)
    rows = folds != 1
    got = corr_from_gram(gram[[0, 2]].sum(axis=0), sums[[0, 2]].sum(axis=0), rows.sum() * 4)
    flat = probs[:, rows].reshape(3, -1).astype(np.float64)
    assert np.allclose(got, np.corrcoef(flat), atol=1e-5)


@pytest.mark.parametrize("coarse", [False, True])
def test_score_view_equals_predict_proba_on_rows(coarse):
    # score_view decides most rows from bounds; it must agree exactly with the full sum,
    # ties included (coarse probabilities tie often).
    rng = np.random.default_rng(8)
    for _ in range(6):
        m, n, c = int(rng.integers(1, 6)), int(rng.integers(30, 150)), int(rng.integers(1, 9))
        probs, y = make_probs(rng, list(rng.uniform(0, 2, m)), n, c)
        if coarse:
            probs = (np.round(probs * 4) / 4).astype(np.float32)
        w = rng.uniform(size=m) * (rng.uniform(size=m) < 0.7)
        if not w.any():
            w[0] = 1.0
        method = MeanEnsemble().fit(probs, y)
        method.weights_ = w / w.sum()
        rows = np.sort(rng.choice(n, n // 2, replace=False))
        p_true, right = method.score_view(OOFView(probs, y, rows))
        pred = method.predict_proba(probs, rows)
        assert np.array_equal(p_true, pred[np.arange(len(rows)), y[rows]])
        assert np.array_equal(right, pred.argmax(axis=1) == y[rows])


def test_greedy_accuracy_on_view_equals_reference_on_copy():
    # Bagging and pruned->greedy select candidates of a view of some rows: the same
    # selection as on the copied sub-array.
    rng = np.random.default_rng(9)
    for _ in range(6):
        m, n, c = int(rng.integers(3, 8)), int(rng.integers(40, 120)), int(rng.integers(2, 9))
        probs, y = make_probs(rng, list(rng.uniform(0, 2, m)), n, c)
        rows = np.sort(rng.choice(n, 2 * n // 3, replace=False))
        cands = np.sort(rng.choice(m, m - 1, replace=False))
        view = OOFView(probs, y, rows).select(cands)
        assert select_accuracy(view, 10, 1) == greedy_reference(probs[cands][:, rows], y[rows],
                                                                10, "acc", 1)


def test_registry_holds_every_method_built_from_config():
    assert list(METHODS) == ["mean", "greedy", "optimized", "pruned", "best_single"]
    assert auto_methods() == ["mean", "greedy", "optimized", "pruned"]
    assert reported_methods()[-1] == "best_single"
    cfg = EnsembleConfig(metric="acc", greedy_iterations=7, greedy_bagging=3, seed=5,
                         temperature=True, prune_threshold=0.5, prune_then="greedy")
    for name, cls in METHODS.items():
        assert type(build_method(cfg, name)) is cls and cls.name == name
    greedy = build_method(cfg, "greedy")
    assert (greedy.iterations, greedy.metric, greedy.bagging, greedy.seed) == (7, "acc", 3, 5)
    assert build_method(cfg, "optimized").temperature is True
    pruned = build_method(cfg, "pruned")
    assert (pruned.threshold, pruned.then, pruned.iterations) == (0.5, "greedy", 7)
    assert build_method(cfg, "best_single").metric == "acc"
    assert type(build_method(EnsembleConfig(method="pruned"))) is PrunedEnsemble


def test_registry_refuses_a_second_class_under_a_taken_name():
    with pytest.raises(ValueError, match="'greedy' is already registered"):
        type("OtherGreedy", (MeanEnsemble,), {"name": "greedy"})
    assert METHODS["greedy"] is GreedyEnsemble
    assert _Spy not in METHODS.values()  # inherits a name without setting one: not registered


def test_config_method_allowed_values_come_from_registry():
    with pytest.raises(ValidationError) as err:
        EnsembleConfig(method="magic")
    assert "choose from auto, mean, greedy, optimized, pruned, best_single" in str(err.value)
    assert EnsembleConfig(method="best_single").method == "best_single"
    assert EnsembleConfig(metric="accuracy").metric == "acc"  # the older spelling still reads


def _oof_set(probs: np.ndarray, y: np.ndarray, folds: np.ndarray) -> OOFSet:
    m, n, _ = probs.shape
    return OOFSet(probs=probs, targets=y, folds=folds, keys=np.array([f"{i}" for i in range(n)]),
                  candidate_ids=[f"c{j}" for j in range(m)], names=[f"m{j}" for j in range(m)])


def test_new_method_class_is_usable_by_name_from_config_and_comparison():
    class LastCandidate(EnsembleMethod):
        """All weight on the last candidate (a method only this test knows)."""

        name = "last_candidate"

        def fit_view(self, data, corr=None):
            self.weights_ = np.zeros(data.m)
            self.weights_[-1] = 1.0
            return self

    try:
        rng = np.random.default_rng(10)
        probs, y = make_probs(rng, [0.0, 0.0, 3.0], 90, 4)  # the last candidate is far best
        oof = _oof_set(probs, y, np.arange(90) % 3)
        assert "last_candidate" in auto_methods()
        res = compare_methods(oof, EnsembleConfig(method="last_candidate"))
        assert res.method == "last_candidate"
        assert res.chosen.weights.tolist() == [0.0, 0.0, 1.0]
        best = BestSingle().fit(probs, y)  # the same candidate, scored the same way
        assert res.chosen.oof_log_loss == pytest.approx(log_loss(best.predict_proba(probs), y))
        assert "last_candidate_honest_acc" in flat_metrics(res)
        auto = compare_methods(oof, EnsembleConfig(method="auto"))
        assert set(auto.results) == {"mean", "greedy", "optimized", "pruned", "best_single",
                                     "last_candidate"}
    finally:
        unregister("last_candidate")
    assert "last_candidate" not in METHODS
    with pytest.raises(ValidationError, match="last_candidate"):
        EnsembleConfig(method="last_candidate")
