"""Greedy forward selection with replacement (Caruana et al. 2004), fast.

Each round adds the candidate whose addition to the running average scores best; the
returned selection is the best prefix of the rounds (its first occurrence). Ties go to a
candidate already chosen, then to the lowest index: deterministic, and the same rule as
AutoGluon's `EnsembleSelection(tie_breaker="first")`.

Log loss works on the (N, M) true-class matrix only. Accuracy keeps a running sum of the
chosen rows and decides most (candidate, row) pairs from bounds on the runner-up class;
only the undecided pairs are summed in full, so the answer is exact.
"""

from __future__ import annotations

import numpy as np

from .metrics import EPS

__all__ = [
    "Selection",
    "greedy_accuracy",
    "greedy_log_loss",
    "selection_weights",
    "single_scores",
]

# Rows whose argmax is decided in full per chunk of (candidate, row) pairs: bounds memory.
_CHUNK = 4096

Selection = list[int]  # candidate indices in the order they were added (repeats allowed)


def _pick(scores: np.ndarray, used: np.ndarray, better_low: bool) -> int:
    best = scores.min() if better_low else scores.max()
    tied = np.flatnonzero(scores == best)
    if len(tied) > 1:
        tied_used = tied[used[tied]]
        if len(tied_used):
            tied = tied_used
    return int(tied[0])


def _best_prefix(order: list[int], trajectory: list[float]) -> Selection:
    # Trajectory holds losses (lower is better); the first occurrence of the minimum wins.
    return order[: int(np.argmin(trajectory)) + 1]


def single_scores(q: np.ndarray | None, correct: np.ndarray | None) -> np.ndarray:
    """Per-candidate loss (lower is better): log loss from q (N, M), or -correct.sum from (M, N)."""
    if q is not None:
        return -np.log(np.clip(q, EPS, None)).mean(axis=0)
    return -correct.sum(axis=1).astype(np.float64)


def _sorted_init(losses: np.ndarray, n_best: int) -> list[int]:
    # Stable sort: ties by index, so the initialisation is deterministic.
    return [int(i) for i in np.argsort(losses, kind="stable")[:n_best]]


def greedy_log_loss(q: np.ndarray, iterations: int, sorted_init: int = 0) -> Selection:
    """q: (N, M) float64 true-class probabilities -> the best prefix of the selection order.

    Cost per round: one (N, M) log. The running sum S (N,) of the chosen columns is the
    ensemble's unnormalised p(true class).
    """
    n, m = q.shape
    s_sum = np.zeros(n, dtype=np.float64)
    used = np.zeros(m, dtype=bool)
    order: list[int] = []
    trajectory: list[float] = []
    for j in _sorted_init(single_scores(q, None), min(sorted_init, m)):
        s_sum += q[:, j]
        used[j] = True
        order.append(j)
        trajectory.append(float(-np.log(np.clip(s_sum / len(order), EPS, None)).mean()))
    rounds = iterations - len(order)
    for _ in range(rounds):
        k = len(order) + 1
        cand = (s_sum[:, None] + q) / k  # (N, M): each candidate added to the running sum
        losses = -np.log(np.clip(cand, EPS, None)).mean(axis=0)
        best = _pick(losses, used, better_low=True)
        s_sum += q[:, best]
        used[best] = True
        order.append(best)
        trajectory.append(float(losses[best]))
        if m == 1:
            break
    return _best_prefix(order, trajectory)


class _AccuracyState:
    """Per-candidate facts that do not change between rounds (on the fitting rows)."""

    def __init__(self, probs: np.ndarray, targets: np.ndarray) -> None:
        m, n, _ = probs.shape
        self.probs, self.targets, self.ar = probs, targets, np.arange(n)
        self.p_true = np.empty((m, n), dtype=np.float64)
        self.p_other = np.empty((m, n), dtype=np.float64)  # best wrong class's probability
        self.c_other = np.empty((m, n), dtype=np.int64)  # and that class
        for j in range(m):
            pj = probs[j].copy()
            self.p_true[j] = pj[self.ar, targets]
            pj[self.ar, targets] = -np.inf
            self.c_other[j] = pj.argmax(axis=1)
            self.p_other[j] = pj[self.ar, self.c_other[j]]

    def correct_counts(self, r_sum: np.ndarray) -> np.ndarray:
        """r_sum: (N, C) float64 running sum -> (M,) rows right when each candidate is added."""
        ar, y, probs = self.ar, self.targets, self.probs
        r_true = r_sum[ar, y]
        masked = r_sum.copy()
        masked[ar, y] = -np.inf
        c_r = masked.argmax(axis=1)
        r_other = masked[ar, c_r]
        true = r_true + self.p_true  # (M, N), the same float sums as a full row would give
        # Upper bound on every wrong class: rounding is monotone, so fl(a+b) <= fl(max a + max b).
        upper = r_other + self.p_other
        lower = np.maximum(r_other + probs[:, ar, c_r], r_sum[ar, self.c_other] + self.p_other)
        counts = (true > upper).sum(axis=1)
        jj, nn = np.nonzero((true >= lower) & (true <= upper))
        for a in range(0, len(jj), _CHUNK):
            j, i = jj[a : a + _CHUNK], nn[a : a + _CHUNK]
            full = r_sum[i] + probs[j, i]
            hit = full.argmax(axis=1) == y[i]
            counts += np.bincount(j[hit], minlength=len(counts))
        return counts


def greedy_accuracy(
    probs: np.ndarray, targets: np.ndarray, iterations: int, sorted_init: int = 0
) -> Selection:
    """probs: (M, N, C), targets: (N,) -> best prefix of the selection order by accuracy.

    The ensemble's argmax is that of the running sum of the chosen probabilities (dividing
    by the count changes no argmax). Scores are integer counts of right rows, so ties are
    exact.
    """
    m, n, c = probs.shape
    state = _AccuracyState(probs, targets)
    r_sum = np.zeros((n, c), dtype=np.float64)
    used = np.zeros(m, dtype=bool)
    order: list[int] = []
    trajectory: list[float] = []
    init: list[int] = []
    if sorted_init:
        singles = single_scores(None, probs.argmax(axis=2) == targets)
        init = _sorted_init(singles, min(sorted_init, m))
    for j in init:
        r_sum += probs[j]
        used[j] = True
        order.append(j)
        trajectory.append(-float((r_sum.argmax(axis=1) == targets).sum()))
    for _ in range(iterations - len(order)):
        counts = state.correct_counts(r_sum)
        best = _pick(counts, used, better_low=False)
        r_sum += probs[best]
        used[best] = True
        order.append(best)
        trajectory.append(-float(counts[best]))
        if m == 1:
            break
    return _best_prefix(order, trajectory)


def selection_weights(selection: Selection, m: int) -> np.ndarray:
    """Selection order -> (M,) float64 weights: how often each candidate was chosen / total."""
    w = np.bincount(np.asarray(selection, dtype=np.int64), minlength=m).astype(np.float64)
    return w / w.sum()
