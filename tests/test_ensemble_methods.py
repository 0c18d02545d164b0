"""Ensemble methods and their registry: facts that hold by construction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ensemble_search.calibration import candidate_temperatures
from ensemble_search.comparison import compare_methods, flat_metrics
from ensemble_search.config import EnsembleConfig
from ensemble_search.correlation import (
    corr_from_gram,
    error_correlation,
    fold_gram,
)
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
)
from ensemble_search.metrics import log_loss, true_class_probs
from ensemble_search.nested import honest_estimate
from ensemble_search.oofview import OOFView, RowFacts
from tests.ensemble_fixtures import make_probs, softmax


def prob_correlation(probs: np.ndarray, rows: int = 32) -> np.ndarray:
    """probs (M, N, C) -> (M, M) Pearson correlation of the flattened probabilities, all rows
    as one fold: what compare_methods' correlation picture shows."""
    gram, sums = fold_gram(probs, np.zeros(probs.shape[1], dtype=np.int64), rows)
    return corr_from_gram(gram[0], sums[0], probs.shape[1] * probs.shape[2])


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


@pytest.mark.parametrize("sorted_init", [0, 2])
def test_greedy_accuracy_equals_reference_with_ties_and_zero_probabilities(sorted_init):
    # Probabilities on a coarse grid: many exact zeros and ties between the true class and
    # wrong classes, in the running sum as well; a duplicated candidate ties every score.
    rng = np.random.default_rng(3)
    for _ in range(10):
        m, n, c = int(rng.integers(2, 6)), int(rng.integers(30, 150)), int(rng.integers(2, 7))
        probs, y = make_probs(rng, list(rng.uniform(0, 3, m)), n, c)
        probs = (np.round(probs * 4) / 4).astype(np.float32)
        probs = np.concatenate([probs, probs[:1]])
        assert (select_accuracy(OOFView(probs, y), 12, sorted_init)
                == greedy_reference(probs, y, 12, "acc", sorted_init))


@pytest.mark.parametrize("m, c", [(1, 5), (4, 1), (4, 2), (1, 1)])
def test_greedy_accuracy_equals_reference_with_one_candidate_or_few_classes(m, c):
    # C == 1: no wrong class at all (every row is right); m == 1: one candidate, chosen once.
    rng = np.random.default_rng(m * 10 + c)
    probs, y = make_probs(rng, list(rng.uniform(0, 2, m)), 60, c)
    for sorted_init in (0, 1):
        assert (select_accuracy(OOFView(probs, y), 8, sorted_init)
                == greedy_reference(probs, y, 8, "acc", sorted_init))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 5), n=st.integers(1, 40),
       c=st.integers(1, 6), levels=st.sampled_from([2, 3, 8, 0]))
def test_greedy_accuracy_equals_reference_on_any_nonnegative_probabilities(seed, m, n, c, levels):
    # Any non-negative scores (the loader checks that), not only softmax outputs: few levels
    # make exact ties in every sum; levels 0 means continuous values.
    rng = np.random.default_rng(seed)
    probs = rng.random((m, n, c), dtype=np.float32)
    if levels:
        probs = np.floor(probs * levels).astype(np.float32) / levels
    y = rng.integers(0, c, n)
    init = int(rng.integers(0, 3))
    assert select_accuracy(OOFView(probs, y), 7, init) == greedy_reference(probs, y, 7, "acc", init)


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
    # Without per-candidate calibration the global temperature must undo the overconfidence.
    plain = OptimizedEnsemble(calibrate=False).fit(probs, y)
    temp = OptimizedEnsemble(temperature=True, calibrate=False).fit(probs, y)
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

    def fit(self, probs, targets):
        _Spy.seen.append(probs[0, :, 0].copy())  # the row ids planted below
        return super().fit(probs, targets)


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


def test_prob_correlation_equals_numpy_with_subnormal_probabilities():
    # Consecutive blocks are copied and floored in one pass; values that would make subnormal
    # products (here 1e-42) move no correlation, and a block boundary inside the rows too.
    rng = np.random.default_rng(16)
    probs, _ = make_probs(rng, [1.0, 0.5, 0.0, 2.0], 75, 6)
    probs[probs < 0.02] = 1e-42
    flat = probs.reshape(4, -1).astype(np.float64)
    assert np.allclose(prob_correlation(probs, rows=8), np.corrcoef(flat), atol=1e-6)


@pytest.mark.parametrize("with_temps", [False, True])
def test_weighted_probs_in_row_blocks_is_the_plain_sum_bit_for_bit(with_temps):
    # 700 rows: three blocks of 256, the last one short; each row's sum is the same float
    # sum, in candidate order, as summing whole (n, C) arrays.
    from ensemble_search.metrics import calibrate, weighted_probs

    rng = np.random.default_rng(19)
    probs, _ = make_probs(rng, [1.0, 0.5, 1.5, 0.2], 700, 7)
    w = np.array([0.5, 0.0, 0.3, 0.2])
    temps = np.array([0.7, 1.0, 2.0, 1.3]) if with_temps else None
    for rows in (None, np.sort(rng.choice(700, 500, replace=False))):
        want = np.zeros((700 if rows is None else 500, 7))
        for j in (0, 2, 3):
            part = probs[j] if rows is None else probs[j, rows]
            want += (part if temps is None else calibrate(part, float(temps[j]))) * w[j]
        assert np.array_equal(weighted_probs(probs, w, rows, temps), want)


def test_compare_methods_correlation_is_prob_correlation_of_all_rows():
    # compare_methods sums the Gram matrices of two row halves on two threads.
    rng = np.random.default_rng(20)
    probs, y = make_probs(rng, [1.0, 0.5, 1.5], 101, 6)
    res = compare_methods(_oof_set(probs, y, np.arange(101) % 3), EnsembleConfig())
    assert np.allclose(res.correlation, prob_correlation(probs), atol=1e-12)


def test_spread_view_takes_every_kth_row_of_the_view():
    rng = np.random.default_rng(17)
    probs, y = make_probs(rng, [1.0, 0.5], 50, 3)
    rows = np.sort(rng.choice(50, 30, replace=False))
    view = OOFView(probs, y, rows)
    assert view.spread(30) is view and view.spread(100) is view  # few rows: all of them
    assert np.array_equal(view.spread(10).rows, rows[::3])
    assert np.array_equal(view.spread(11).rows, rows[::3])  # ceil(30 / 11) = 3: at most 11
    assert np.array_equal(OOFView(probs, y).spread(20).rows, np.arange(0, 50, 3))


def test_candidate_temperatures_are_fitted_on_a_spread_of_large_views(monkeypatch):
    # The temperatures of a view above the row limit are those of its spread sample, and on
    # a view within the limit nothing changes.
    import ensemble_search.calibration as calibration

    rng = np.random.default_rng(18)
    probs, y = make_probs(rng, [1.0, 0.5, 1.5], 90, 5)
    probs = softmax(np.log(probs) * np.array([0.4, 1.0, 2.5])[:, None, None])
    view = OOFView(probs, y)
    whole = candidate_temperatures(view)
    monkeypatch.setattr(calibration, "_FIT_ROWS", 30)
    assert np.array_equal(candidate_temperatures(view), candidate_temperatures(view.spread(30)))
    assert not np.array_equal(candidate_temperatures(view), whole)
    monkeypatch.setattr(calibration, "_FIT_ROWS", 90)
    assert np.array_equal(candidate_temperatures(view), whole)


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

        def fit_view(self, data):
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
        del METHODS["last_candidate"]
    assert "last_candidate" not in METHODS
    with pytest.raises(ValidationError, match="last_candidate"):
        EnsembleConfig(method="last_candidate")


def _focal_like(seed: int, n: int = 1500, c: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One strong but under-confident candidate (flat, as focal loss leaves it) and five
    weaker, sharp ones: a log-loss fit of raw probabilities trusts the sharp ones."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c))
    y = rng.integers(0, c, n)
    z[np.arange(n), y] += 3.0
    shared = rng.normal(size=(n, c))
    probs = [softmax((z + 0.5 * shared + 0.8 * rng.normal(size=(n, c))) / 4.0)]
    probs += [softmax(2.0 * (0.6 * z + 0.5 * shared + rng.normal(size=(n, c)))) for _ in range(5)]
    return np.stack(probs), y, rng.permutation(np.arange(n) % 5)


@pytest.mark.parametrize("metric", ["acc", "log_loss"])
def test_optimized_calibrates_underconfident_strong_candidate(metric):
    for seed in range(2):
        probs, y, folds = _focal_like(seed)
        single = (probs.argmax(axis=2) == y).mean(axis=1)
        assert single[0] > single[1:].max() + 0.15  # the flat one is the strong one
        res = compare_methods(_oof_set(probs, y, folds), EnsembleConfig(metric=metric))
        opt, mean = res.results["optimized"], res.results["mean"]
        assert opt.temperatures is not None and opt.temperatures[0] < 1.0  # sharpened
        assert opt.honest.acc > mean.honest.acc + 0.05, seed  # labels held back
        assert opt.honest.acc >= res.results["best_single"].honest.acc - 0.01, seed


def test_optimized_with_acc_never_below_mean_on_held_out_folds():
    rng = np.random.default_rng(12)
    for trial in range(4):
        m = int(rng.integers(2, 6))
        probs, y = make_probs(rng, list(rng.uniform(0.0, 2.5, m)), 400, 8)
        probs = softmax(np.log(probs) * rng.uniform(0.3, 3.0, m)[:, None, None])  # mixed scales
        res = compare_methods(_oof_set(probs, y, np.arange(400) % 4), EnsembleConfig())
        assert (res.results["optimized"].honest.acc
                >= res.results["mean"].honest.acc - 0.01), trial


def test_per_candidate_temperatures_are_applied_before_weighting():
    rng = np.random.default_rng(13)
    probs, y = make_probs(rng, [1.0, 0.5, 1.5], 60, 5)
    method = OptimizedEnsemble().fit(probs, y)
    method.weights_ = np.array([0.5, 0.0, 0.5])
    method.temperatures_ = np.array([0.5, 3.0, 2.0])
    want = 0.5 * apply_temperature(probs[0].astype(np.float64), 0.5) + \
        0.5 * apply_temperature(probs[2].astype(np.float64), 2.0)
    assert np.allclose(method.predict_proba(probs), want, atol=1e-12)
    p_true, right = method.score_view(OOFView(probs, y))
    assert np.array_equal(right, want.argmax(axis=1) == y)
    assert np.allclose(p_true, want[np.arange(60), y], atol=1e-12)


def test_error_correlation_is_phi_of_error_indicators():
    rng = np.random.default_rng(14)
    correct = rng.uniform(size=(4, 200)) < [[0.9], [0.7], [0.5], [0.8]]
    correct[3] = correct[1]  # the same errors: 1
    corr = error_correlation(correct)
    assert np.allclose(corr, np.corrcoef((~correct).astype(float)), atol=1e-12)
    assert corr[1, 3] == pytest.approx(1.0)
    correct[0] = True  # never wrong: no error variance, shares nothing
    assert error_correlation(correct)[0, 1:].tolist() == [0.0, 0.0, 0.0]


def test_pruned_drops_clones_of_a_weak_candidate_that_swamp_the_mean():
    # Three good candidates with independent errors and five near-copies of a weak one:
    # the plain mean is the weak one's vote five times over; pruning on errors keeps one copy.
    rng = np.random.default_rng(15)
    n, c = 600, 6
    y = rng.integers(0, c, n)
    good, _ = make_probs(rng, [2.0, 2.0, 2.0], n, c, targets=y)
    weak, _ = make_probs(rng, [0.6], n, c, targets=y)
    clones = softmax(np.log(weak) * 3 + 0.05 * rng.normal(size=(5, n, c)))
    probs = np.concatenate([good, clones])
    err = error_correlation(RowFacts(probs, y).correct)
    assert np.median(err[3:, 3:][np.triu_indices(5, 1)]) > 0.7
    assert err[:3, :3][np.triu_indices(3, 1)].max() < 0.7
    p = PrunedEnsemble().fit(probs, y)  # the default threshold
    assert set(p.kept_.tolist()) >= {0, 1, 2} and len(set(p.kept_.tolist()) & {3, 4, 5, 6, 7}) == 1
    res = compare_methods(_oof_set(probs, y, np.arange(n) % 5), EnsembleConfig())
    assert res.results["pruned"].honest.acc > res.results["mean"].honest.acc
    assert res.diversity.shape == (8, 8)


def test_auto_with_metric_acc_picks_best_honest_accuracy():
    # The path both shipped configs take (metric acc is also the default).
    assert EnsembleConfig().metric == "acc"
    rng = np.random.default_rng(16)
    probs, y = make_probs(rng, [0.2, 0.4, 2.5, 0.3], 300, 5)
    res = compare_methods(_oof_set(probs, y, np.arange(300) % 5), EnsembleConfig(method="auto"))
    assert res.metric == "acc"
    best = max(auto_methods(), key=lambda k: res.results[k].honest.acc)
    assert res.results[res.method].honest.acc == res.results[best].honest.acc
    assert res.chosen.weights[2] == res.chosen.weights.max()
    assert res.results["greedy"].honest.acc >= res.results["mean"].honest.acc
