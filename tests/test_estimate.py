"""Tests for ensemble_search.estimate: the submission's accuracy estimate and its interval."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ensemble_search.estimate import SubmissionEstimate, estimate_submission
from tests.synthetic_probs import make_fold_probs

# Many OOF rows (cheap: one fold model each) keep the honest term's own noise near 0.25 pp,
# so the tolerance below measures the method, not the sampling of the labels.
SIZES = dict(n=40000, n_test=5000, classes=20)


def _estimate(s, **kw) -> SubmissionEstimate:
    w = np.ones(s.oof_probs.shape[0])
    return estimate_submission(s.oof_probs, s.targets, s.folds, s.fold_test_probs, w, **kw)


@pytest.mark.parametrize("regime", [dict(), dict(signal=6.0), dict(fold=1.6),
                                    dict(candidates=1), dict(under_confidence=0.7)])
def test_estimate_submission_closes_the_gap_on_synthetic_truth(regime: dict) -> None:
    s = make_fold_probs(seed=1, **SIZES, **regime)
    e = _estimate(s)
    _, expected = s.submission_acc(np.ones(s.oof_probs.shape[0]))
    # The honest estimate scores one fold model: it is low by the averaging gain.
    assert expected - e.honest > 0.01
    assert abs(e.acc - expected) < 0.01
    assert abs(e.acc - expected) < 0.5 * (expected - e.honest)
    assert e.pool_low <= e.acc <= e.pool_high


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("regime", [dict(), dict(signal=3.0, candidates=3), dict(fold=0.4)])
def test_estimate_submission_interval_covers_realised_accuracy(regime: dict, seed: int) -> None:
    s = make_fold_probs(seed=seed, **SIZES, **regime)
    e = _estimate(s)
    realised, _ = s.submission_acc(np.ones(s.oof_probs.shape[0]))
    assert e.low <= realised <= e.high
    assert 0.0 <= e.low < e.acc < e.high <= 1.0
    # The width holds at least the test set's binomial noise.
    assert e.high - e.low >= 2 * 1.95 * e.sd_test


def test_estimate_submission_equals_honest_with_one_fold() -> None:
    s = make_fold_probs(seed=0, n=600, n_test=300, classes=10, n_folds=2)
    folds = np.zeros_like(s.folds)  # one fold model scores every row
    e = estimate_submission(s.oof_probs, s.targets, folds, s.fold_test_probs[:, :1],
                            np.ones(2))
    assert e.gain == 0.0 and e.disagreement == 0.0
    assert e.acc == e.honest == pytest.approx(
        (s.oof_probs.mean(axis=0).argmax(axis=1) == s.targets).mean())
    assert e.sd_method == 0.0


def test_estimate_submission_equals_honest_when_fold_models_agree() -> None:
    s = make_fold_probs(seed=0, n=1000, n_test=500, classes=10)
    same = np.repeat(s.fold_test_probs[:, :1], 5, axis=1)  # five identical fold models
    e = estimate_submission(s.oof_probs, s.targets, s.folds, same, np.ones(2))
    assert e.acc == e.honest and e.gain == 0.0 and e.disagreement == 0.0


def test_estimate_submission_honest_uses_each_folds_weights() -> None:
    s = make_fold_probs(seed=0, n=1000, n_test=200, classes=10, candidates=2)
    # Fold k's nested weights put everything on candidate k % 2.
    fw = np.array([[1.0, 0.0] if k % 2 == 0 else [0.0, 1.0] for k in range(5)])
    e = estimate_submission(s.oof_probs, s.targets, s.folds, s.fold_test_probs,
                            np.ones(2), fold_weights=fw)
    want = np.mean([(s.oof_probs[k % 2, s.folds == k].argmax(1) == s.targets[s.folds == k])
                    .mean() for k in range(5)])
    assert e.honest == pytest.approx(want)


def test_estimate_submission_as_dict_holds_every_field() -> None:
    s = make_fold_probs(seed=0, n=500, n_test=200, classes=5)
    d = _estimate(s).as_dict()
    assert {"acc", "low", "high", "honest", "gain", "sd_test"} <= set(d)
    assert d["n_oof"] == 500 and d["n_test"] == 200 and d["n_folds"] == 5


def _good() -> dict:
    s = make_fold_probs(seed=0, n=100, n_test=20, classes=4, n_folds=2)
    return dict(oof_probs=s.oof_probs, targets=s.targets, folds=s.folds,
                fold_test_probs=s.fold_test_probs, weights=np.ones(2))


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(oof_probs=a["oof_probs"][0]), "oof_probs must be"),
    (lambda a: a.update(fold_test_probs=a["fold_test_probs"][:1]), "fold_test_probs must be"),
    (lambda a: a.update(fold_test_probs=a["fold_test_probs"][..., :3]), "fold_test_probs"),
    (lambda a: a.update(targets=a["targets"][:-1]), "targets and folds"),
    (lambda a: a.update(targets=a["targets"] + 4), "targets must be integers"),
    (lambda a: a.update(folds=np.zeros_like(a["folds"])), "every fold id"),
    (lambda a: a.update(folds=a["folds"] + 1), "every fold id"),
    (lambda a: a.update(weights=np.ones(3)), "weights must have shape"),
    (lambda a: a.update(weights=np.array([1.0, -1.0])), "non-negative"),
    (lambda a: a.update(weights=np.zeros(2)), "not all zero"),
    (lambda a: a.update(fold_weights=np.ones((3, 2))), "fold_weights must have shape"),
    (lambda a: a["oof_probs"].__setitem__((0, 0, 0), np.nan), "finite"),
    (lambda a: a.update(level=1.0), "level"),
])
def test_estimate_submission_refuses_bad_input(change, match: str) -> None:
    args = _good()
    change(args)
    with pytest.raises(ValueError, match=match):
        estimate_submission(**args)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), k=st.integers(1, 4), m=st.integers(1, 3),
       c=st.integers(2, 6), flat=st.floats(0.2, 5.0))
@example(seed=3954, k=2, m=3, c=2, flat=1.0)  # once gave acc 1.41: b at its bound, unclipped
def test_estimate_submission_always_a_finite_ordered_interval(seed: int, k: int, m: int,
                                                              c: int, flat: float) -> None:
    rng = np.random.default_rng(seed)
    n, n_test = 4 * k, 7

    def probs(*shape: int) -> np.ndarray:
        z = rng.normal(size=shape) / flat
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

    folds = np.arange(n) % k
    e = estimate_submission(probs(m, n, c), rng.integers(0, c, n), folds,
                            probs(m, k, n_test, c), rng.random(m) + 0.01)
    values = np.array([e.acc, e.low, e.high, e.honest, e.pool_low, e.pool_high])
    assert np.isfinite(values).all()
    assert 0.0 <= e.low <= e.high <= 1.0 and e.low <= min(max(e.acc, 0.0), 1.0) <= e.high


def test_estimate_interval_is_never_zero_width():
    # Every OOF row right and test predictions unrelated to the OOF ones: both fits clip and
    # the accuracy is exactly 1, yet 300 labelled and 200 test rows cannot prove it is 1.
    rng = np.random.default_rng(0)
    m, k, n, n_test, c = 2, 3, 300, 200, 5
    targets = rng.integers(0, c, n)
    oof = np.full((m, n, c), 0.02, dtype=np.float32)
    oof[:, np.arange(n), targets] = 0.92
    test = rng.dirichlet(np.ones(c), size=(m, k, n_test)).astype(np.float32)
    est = estimate_submission(oof, targets, np.arange(n) % k, test, np.ones(m))
    assert est.high - est.low > 0.01
    assert est.low <= est.acc <= est.high
