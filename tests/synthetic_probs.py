"""Synthetic K-fold predictions with a known truth, for checking accuracy estimators.

The generative model (all noise Gaussian, per row and class):

    true logits   z    = signal * onehot(anchor) + N(0, 1)      anchor uniform over C
    label         y    ~ softmax(z)                             (so the Bayes posterior is known)
    fold model    l_mk = skill_m * z + common * e + shared * e_m + fold * e_mk
    probabilities p_mk = softmax(l_mk / under_confidence)

`e` is shared by every model (rows every model misreads), `e_m` by candidate m's fold
models (its architecture's blind spots), `e_mk` belongs to one fold model (its training
data and seed): averaging the K fold models shrinks only `e_mk`, which is what makes
the submission better than any one fold model. `under_confidence` > 1 flattens the
softmax as focal loss does. OOF row i is scored by its own fold's model only; test rows
by all K, as the prediction store holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SyntheticFolds", "make_fold_probs", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax over the last axis, float32."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@dataclass
class SyntheticFolds:
    """Arrays in the shapes `estimate_submission` takes, plus the truth."""

    oof_probs: np.ndarray  # (M, N, C) float32, row i by fold folds[i]'s model
    targets: np.ndarray  # (N,) int64
    folds: np.ndarray  # (N,) int64 in 0..K-1
    fold_test_probs: np.ndarray  # (M, K, n_test, C) float32
    test_targets: np.ndarray  # (n_test,) int64, drawn from the true posterior
    test_posterior: np.ndarray  # (n_test, C) float32, the true P(y | x)

    def submission_acc(self, weights: np.ndarray) -> tuple[float, float]:
        """(realised, expected) test accuracy of the submission with these weights (M,)."""
        w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        pred = np.einsum("m,mknc->nc", w, self.fold_test_probs).argmax(axis=1)
        rows = np.arange(len(pred))
        return (float((pred == self.test_targets).mean()),
                float(self.test_posterior[rows, pred].mean()))


def _truth(rng: np.random.Generator, n: int, c: int, signal: float) -> np.ndarray:
    z = rng.normal(size=(n, c))
    z[np.arange(n), rng.integers(0, c, n)] += signal
    return z


def _draw(rng: np.random.Generator, posterior: np.ndarray) -> np.ndarray:
    # Inverse-CDF sampling per row: one uniform per row, no Python loop.
    cdf = np.cumsum(posterior, axis=1, dtype=np.float64)
    u = rng.random(len(posterior))[:, None] * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=1), posterior.shape[1] - 1).astype(np.int64)


def make_fold_probs(
    *,
    n: int = 3000,
    n_test: int = 2000,
    classes: int = 20,
    candidates: int = 2,
    n_folds: int = 5,
    signal: float = 4.0,
    skills: tuple[float, ...] | None = None,
    common: float = 0.5,
    shared: float = 0.7,
    fold: float = 1.0,
    under_confidence: float = 2.0,
    seed: int = 0,
) -> SyntheticFolds:
    """Draw one data set; `skills` (one per candidate) defaults to 1.0, 0.9, 0.8, ..."""
    if skills is None:
        skills = tuple(1.0 - 0.1 * (j % 5) for j in range(candidates))
    if len(skills) != candidates:
        raise ValueError(f"skills has {len(skills)} values but candidates is {candidates}.")
    rng = np.random.default_rng(seed)
    folds = np.arange(n) % n_folds
    rng.shuffle(folds)
    z_tr, z_te = _truth(rng, n, classes, signal), _truth(rng, n_test, classes, signal)
    post_te = softmax(z_te)
    targets, test_targets = _draw(rng, softmax(z_tr)), _draw(rng, post_te)
    e_tr = common * rng.normal(size=z_tr.shape)
    e_te = common * rng.normal(size=z_te.shape)
    oof = np.empty((candidates, n, classes), dtype=np.float32)
    test = np.empty((candidates, n_folds, n_test, classes), dtype=np.float32)
    for m, skill in enumerate(skills):
        base_tr = skill * z_tr + e_tr + shared * rng.normal(size=z_tr.shape)
        base_te = skill * z_te + e_te + shared * rng.normal(size=z_te.shape)
        oof[m] = softmax((base_tr + fold * rng.normal(size=z_tr.shape)) / under_confidence)
        for k in range(n_folds):
            test[m, k] = softmax((base_te + fold * rng.normal(size=z_te.shape))
                                 / under_confidence)
    return SyntheticFolds(oof, targets, folds.astype(np.int64), test, test_targets, post_te)
