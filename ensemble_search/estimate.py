"""An estimate of the submission's own test accuracy, with an honest interval.

The problem. Each OOF row is scored by one fold model, but the submission averages the
K fold models of each candidate. So the honest (OOF) accuracy measures a *single* fold
model's ensemble, and the submission, whose fold noise is averaged away, scores higher.
Calibrated confidence alone (ATC, DoC) does not fix it: averaging raises accuracy while
lowering confidence, so a temperature fitted on OOF rows does not transfer.

The method: honest accuracy plus an averaging gain measured on the test set.

1. ``honest``: for each fold k, the accuracy of fold k's ensemble p_k (weights over the M
   candidates, or fold k's nested weights) on fold k's OOF rows; their mean over folds.
   These rows are labelled and out-of-sample for exactly that model, so this is an
   unbiased estimate of the expected test accuracy of one fold ensemble.
2. A reference posterior on the test rows, a pool of fold ensembles
   ``q_b(c | x) = softmax_c(b * log pool(c | x))``, whose sharpness b is fitted on the
   unlabelled test rows so that the pool reproduces what the labels say about one fold
   ensemble: mean_k mean_x q_b(argmax p_k(x) | x) = honest. Only rows where some fold
   ensemble's argmax differs from the submission's can change the score, and q_b says
   which side is right there. Two fits bracket the truth:

   - ``low``-side: pool = the submission pbar, gain = mean_x [q_b(argmax pbar) -
     mean_k q_b(argmax p_k)]. The pool contains fold k's own noise, so it agrees with
     p_k too readily; to match ``honest`` b comes out too small, the pool too flat, and
     the gain too small.
   - ``high``-side: b fitted with leave-one-fold-out pools (pool_-k scores p_k, sharing
     none of its fold noise), then the estimate is the full pool's mean confidence
     mean_x max_c q_b(c | x) at that b. The full pool is better informed than the
     leave-one-out pools b was fitted on, so this side usually comes out high.

   The estimate is their midpoint, and half their distance is taken as one standard
   deviation of the method's own error. On the synthetic regimes of
   benchmarks/submission_estimate.py (``--sides``: the labelled term made exact), the low
   side fell short by 15-40 % of the true gain, the high side was off by -4 to +37 %, and
   the midpoint by -21 to +11 % (0.7 pp at most).
3. With K = 1, or fold ensembles that agree on every test row, both sides equal
   ``honest`` exactly: there is nothing to gain.

Assumptions: test rows come from the same distribution as the training rows (what
every OOF estimate assumes); the folds' models are exchangeable (same config, disjoint
data, so one fold's OOF accuracy stands for any fold model's test accuracy); fold
models differ by noise that averaging shrinks, and a softmax of the pooled
log-probabilities with one fitted sharpness is a fair posterior for the rows where
they disagree.

The interval (``level``, default 95 %) is normal with three variances added: the test
set's binomial sampling noise acc(1-acc)/n_test (the realised score of a finite test
set), the estimator's noise from the labelled term (binomial within each fold, carried
through the refit of b), and the method term (half the distance between the sides).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

__all__ = ["SubmissionEstimate", "estimate_submission"]

# Floor before the log: float32 softmax outputs can be exactly 0.
_EPS = 1e-12
# The pool's sharpness b is searched in [1e-2, 1e3]: q_b is all but uniform or one-hot there
# (fitted values are near 1, above it for under-confident focal-loss models).
_LOG_B = (float(np.log(1e-2)), float(np.log(1e3)))


@dataclass(frozen=True)
class SubmissionEstimate:
    """The estimate and its parts; every accuracy is a fraction in [0, 1]."""

    acc: float  # estimated test accuracy of the submission: (pool_low + pool_high) / 2
    low: float  # interval bounds at `level`
    high: float
    level: float
    honest: float  # mean over folds of fold k's ensemble accuracy on fold k's OOF rows
    gain: float  # acc - honest: the accuracy gained by averaging the K fold models
    pool_low: float  # the side that underestimates the gain (full pool)
    pool_high: float  # the side that overestimates it (leave-one-fold-out fit)
    disagreement: float  # share of test rows where some fold ensemble's argmax differs
    sd_test: float  # binomial noise of a test set of n_test rows
    sd_estimator: float  # noise of the labelled term, carried through the fit of b
    sd_method: float  # (pool_high - pool_low) / 2
    n_oof: int
    n_test: int
    n_folds: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _check(oof_probs: np.ndarray, targets: np.ndarray, folds: np.ndarray,
           fold_test_probs: np.ndarray, weights: np.ndarray,
           fold_weights: np.ndarray | None) -> tuple[int, int, int, int]:
    """Raise ValueError unless the arrays fit together; -> (M, N, C, K)."""
    if oof_probs.ndim != 3:
        raise ValueError(f"oof_probs must be (M, N, C) but has shape {oof_probs.shape}.")
    m, n, c = oof_probs.shape
    if fold_test_probs.ndim != 4 or fold_test_probs.shape[0] != m \
            or fold_test_probs.shape[3] != c:
        raise ValueError(f"fold_test_probs must be (M={m}, K, n_test, C={c}) but has shape "
                         f"{fold_test_probs.shape}.")
    _, k, n_test, _ = fold_test_probs.shape
    if n == 0 or n_test == 0 or k == 0 or c < 2:
        raise ValueError(f"need OOF rows, test rows, folds and 2+ classes but got N={n}, "
                         f"n_test={n_test}, K={k}, C={c}.")
    if targets.shape != (n,) or folds.shape != (n,):
        raise ValueError(f"targets and folds must be (N={n},) but have shapes "
                         f"{targets.shape} and {folds.shape}.")
    if not np.issubdtype(targets.dtype, np.integer) or targets.min() < 0 \
            or targets.max() >= c:
        raise ValueError(f"targets must be integers in 0..{c - 1}.")
    have = np.unique(folds)
    if not np.array_equal(have, np.arange(k)):
        raise ValueError(f"folds must hold every fold id 0..{k - 1} of fold_test_probs "
                         f"(K={k}) but hold {have.tolist()}.")
    for name, w, shape in (("weights", weights, (m,)), ("fold_weights", fold_weights, (k, m))):
        if w is None:
            continue
        if w.shape != shape:
            raise ValueError(f"{name} must have shape {shape} but has {w.shape}.")
        if not np.isfinite(w).all() or (w < 0).any() or (w.sum(axis=-1) <= 0).any():
            raise ValueError(f"{name} must be finite, non-negative and not all zero.")
    for name, p in (("oof_probs", oof_probs), ("fold_test_probs", fold_test_probs)):
        if not np.isfinite(p).all() or (p < 0).any():
            raise ValueError(f"{name} must be finite and non-negative.")
    return m, n, c, k


def _fold_correct(oof_probs: np.ndarray, targets: np.ndarray, folds: np.ndarray,
                  weights: np.ndarray) -> list[np.ndarray]:
    """Per fold k: (n_k,) bool, fold k's ensemble (weights (K, M)) right on fold k's rows."""
    out = []
    for k, w in enumerate(weights):
        rows = np.flatnonzero(folds == k)
        p = np.einsum("m,mnc->nc", w, oof_probs[:, rows], dtype=np.float64)
        out.append(p.argmax(axis=1) == targets[rows])
    return out


def _shifted(log_pool: np.ndarray) -> np.ndarray:
    """log_pool minus its row max (<= 0, float32): b * it is log q_b up to a row constant."""
    return (log_pool - log_pool.max(axis=-1, keepdims=True)).astype(np.float32)


def _mean_q(shifted: np.ndarray, b: float, pick: np.ndarray | None) -> float:
    """mean over rows of q_b(pick | x), q_b = softmax(b * log pool); pick None: the max.

    shifted: (..., n, C) from `_shifted`; pick: (..., n) int. One exp pass per call.
    """
    log_norm = np.log(np.exp(b * shifted).sum(axis=-1, dtype=np.float64))  # (..., n)
    top = 0.0 if pick is None else \
        b * np.take_along_axis(shifted, pick[..., None], axis=-1)[..., 0].astype(np.float64)
    return float(np.exp(top - log_norm).mean())


def _binomial_var(p: float, n: int) -> float:
    """Variance of an accuracy p measured on n rows, Agresti-Coull style (2 right, 2 wrong
    added): never 0, so an accuracy of exactly 1 (or 0) still gets an interval of its own."""
    p_adj = (p * n + 2.0) / (n + 4.0)
    return p_adj * (1.0 - p_adj) / (n + 4.0)


def _fit_b(curve: Callable[[float], float], target: float) -> float:
    """b with curve(b) = target; curve rises with b. Clipped to the search range's ends."""
    lo, hi = _LOG_B
    seen: dict[float, float] = {}  # brentq evaluates the ends again: each costs a softmax

    def f(lb: float) -> float:
        if lb not in seen:
            seen[lb] = curve(float(np.exp(lb))) - target
        return seen[lb]

    if f(lo) >= 0:
        return float(np.exp(lo))
    if f(hi) <= 0:
        return float(np.exp(hi))
    return float(np.exp(brentq(f, lo, hi, xtol=1e-3)))


class _Pools:
    """The fold ensembles' test predictions and the two pools built from them."""

    def __init__(self, fold_ens: np.ndarray) -> None:
        k = len(fold_ens)  # fold_ens: (K, n_test, C) float32
        self.fold_preds = fold_ens.argmax(axis=2)  # (K, n_test)
        total = fold_ens.sum(axis=0, dtype=np.float64)
        self.sub_pred = total.argmax(axis=1)  # the submission's argmax (same as the mean's)
        self.full = _shifted(np.log(np.maximum(total / k, _EPS)))  # (n_test, C)
        # pool_-k: the mean of every fold ensemble but k; it shares none of p_k's fold noise.
        self.loo = _shifted(np.log(np.maximum((total[None] - fold_ens) / max(k - 1, 1),
                                              _EPS)))  # (K, n_test, C)

    def low_side(self, honest: float) -> float:
        b = _fit_b(lambda b: _mean_q(self.full[None], b, self.fold_preds), honest)
        gain = _mean_q(self.full, b, self.sub_pred) \
            - _mean_q(self.full[None], b, self.fold_preds)
        return honest + gain

    def sides(self, honest: float) -> tuple[float, float]:
        """(low side, high side), each clipped to [0, 1]."""
        return (min(max(self.low_side(honest), 0.0), 1.0),
                min(max(self.high_side(honest), 0.0), 1.0))

    def high_side(self, honest: float) -> float:
        b = _fit_b(lambda b: _mean_q(self.loo, b, self.fold_preds), honest)
        # Anchored on honest, so a clipped b still leaves the labelled term in charge.
        return honest + _mean_q(self.full, b, None) - _mean_q(self.loo, b, self.fold_preds)


def estimate_submission(
    oof_probs: np.ndarray,
    targets: np.ndarray,
    folds: np.ndarray,
    fold_test_probs: np.ndarray,
    weights: np.ndarray,
    *,
    fold_weights: np.ndarray | None = None,
    level: float = 0.95,
) -> SubmissionEstimate:
    """Estimate the test accuracy of the submission argmax_c sum_m w_m mean_k p_mk(c | x).

    oof_probs: (M, N, C) each candidate's OOF probabilities, row i scored by the model of
    fold folds[i]; targets: (N,) int; folds: (N,) int in 0..K-1; fold_test_probs:
    (M, K, n_test, C) each candidate's fold models' test probabilities; weights: (M,) the
    submission's candidate weights (normalised here). fold_weights: optional (K, M), the
    nested weights fitted without fold k, for an honest first term when the weights were
    chosen on the same OOF rows (otherwise `weights` score every fold, a little
    optimistic). A temperature on the submission does not change its argmax, so it
    plays no part. Raises ValueError on shapes or values that do not fit together.
    """
    oof_probs, fold_test_probs = np.asarray(oof_probs), np.asarray(fold_test_probs)
    targets, folds = np.asarray(targets), np.asarray(folds)
    weights = np.asarray(weights, dtype=np.float64)
    fw = None if fold_weights is None else np.asarray(fold_weights, dtype=np.float64)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1) but got {level}.")
    m, n, c, k = _check(oof_probs, targets, folds, fold_test_probs, weights, fw)
    n_test = fold_test_probs.shape[2]
    w = weights / weights.sum()
    fw = np.tile(w, (k, 1)) if fw is None else fw / fw.sum(axis=1, keepdims=True)

    # 1. honest: each fold ensemble on its own held-out rows, and its binomial noise.
    correct = _fold_correct(oof_probs, targets, folds, fw)
    honest = float(np.mean([r.mean() for r in correct]))
    sd_honest = float(np.sqrt(sum(_binomial_var(r.mean(), len(r)) for r in correct)) / k)

    # 2. the two sides, from the fold ensembles on the test rows.
    fold_ens = np.einsum("m,mknc->knc", w.astype(np.float32), fold_test_probs)
    pools = _Pools(fold_ens)
    del fold_ens
    differ = (pools.fold_preds != pools.sub_pred[None, :]).any(axis=0)
    if not differ.any():  # K = 1, or fold ensembles that agree everywhere: nothing to gain
        low_side = high_side = honest
        slope = 1.0
    else:
        # Clipped: on a few rows b can hit its bound, and the anchored difference then
        # says nothing the unit interval does not.
        low_side, high_side = pools.sides(honest)
        # How the estimate moves with the labelled term, for carrying its noise through.
        step = max(sd_honest, 1e-3)
        moved = sum(pools.sides(honest + step)) / 2
        slope = (moved - (low_side + high_side) / 2) / step
    acc = (low_side + high_side) / 2

    # 3. the interval.
    p = min(max(acc, 0.0), 1.0)
    sd_test = float(np.sqrt(_binomial_var(p, n_test)))
    # At least the honest term's own noise: when the fits clip (test predictions unrelated to
    # the OOF ones) the measured slope is 0, and a zero-width interval would claim certainty.
    sd_est = max(abs(slope), 1.0) * sd_honest
    sd_method = abs(high_side - low_side) / 2
    sd = float(np.sqrt(sd_test**2 + sd_est**2 + sd_method**2))
    z = float(norm.ppf(0.5 + level / 2))
    return SubmissionEstimate(
        acc=acc, low=max(0.0, acc - z * sd), high=min(1.0, acc + z * sd), level=level,
        honest=honest, gain=acc - honest, pool_low=low_side, pool_high=high_side,
        disagreement=float(differ.mean()), sd_test=sd_test, sd_estimator=sd_est,
        sd_method=sd_method, n_oof=n, n_test=n_test, n_folds=k,
    )
