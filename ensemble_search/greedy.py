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
from .oofview import OOFView

__all__ = [
    "Selection",
    "greedy_accuracy",
    "greedy_log_loss",
    "select_accuracy",
    "selection_weights",
    "single_scores",
]

# Rows whose argmax is decided in full per chunk of (candidate, row) pairs: bounds memory.
_CHUNK = 4096
# Rows of the (n, C) float64 running sum updated at a time: 2 MB at C = 500, stays in cache.
_ROWS = 512

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
    """The running sum of the chosen candidates on the view's rows, and the fixed facts.

    The sum is kept as its true-class column `r_true` (n,) and the rest `r_wrong` (n, C) with
    -inf in the true class, so each round needs one cache-sized pass over it: add the pick
    and find each row's best wrong class (`c_r`, value `r_other`). No (n, C) copy is made.
    """

    def __init__(self, view: OOFView) -> None:
        n, c = view.n, view.probs.shape[2]
        self.view, self.y, self.ar = view, view.targets, np.arange(n)
        self.cands = np.arange(view.m) if view.cands is None else view.cands
        self.rows = self.ar if view.rows is None else view.rows
        self.p_true = np.ascontiguousarray(view.q.T)  # (m, n)
        self.p_other, self.c_other = view.p_other, view.c_other  # (m, n)
        self.r_true = np.zeros(n)
        self.r_wrong = np.zeros((n, c))
        self.r_wrong[self.ar, self.y] = -np.inf
        self.c_r = self.r_wrong.argmax(axis=1)
        self.r_other = self.r_wrong[self.ar, self.c_r]

    def add(self, j: int) -> None:
        """Add candidate j (index into the view) to the running sum."""
        self.r_true += self.p_true[j]
        p = self.view.probs[self.cands[j]]
        for a in range(0, len(self.ar), _ROWS):
            blk = self.r_wrong[a : a + _ROWS]
            blk += p[self.rows[a : a + _ROWS]]  # -inf stays -inf in the true class
            self.c_r[a : a + _ROWS] = blk.argmax(axis=1)
        self.r_other = self.r_wrong[self.ar, self.c_r]

    def n_correct(self) -> int:
        """Rows whose argmax of the running sum is the target (first maximum wins)."""
        r, o = self.r_true, self.r_other
        return int(((r > o) | ((r == o) & (self.c_r > self.y))).sum())

    def correct_counts(self) -> np.ndarray:
        """(m,) rows right when each candidate is added to the running sum."""
        ar, y, r_wrong, c_r, r_other = self.ar, self.y, self.r_wrong, self.c_r, self.r_other
        probs = self.view.probs
        true = self.r_true + self.p_true  # (m, n), the same float sums as a full row would give
        # Upper bound on every wrong class: rounding is monotone, so fl(a+b) <= fl(max a + max b).
        upper = r_other + self.p_other
        lower = np.maximum(r_other + probs[self.cands[:, None], self.rows, c_r],
                           r_wrong[ar, self.c_other] + self.p_other)
        counts = (true > upper).sum(axis=1)
        jj, nn = np.nonzero((true >= lower) & (true <= upper))
        for a in range(0, len(jj), _CHUNK):
            j, i = jj[a : a + _CHUNK], nn[a : a + _CHUNK]
            full = r_wrong[i] + probs[self.cands[j], self.rows[i]]
            full[np.arange(len(i)), y[i]] = true[j, i]
            hit = full.argmax(axis=1) == y[i]
            counts += np.bincount(j[hit], minlength=len(counts))
        return counts


def greedy_accuracy(
    probs: np.ndarray, targets: np.ndarray, iterations: int, sorted_init: int = 0
) -> Selection:
    """probs: (M, N, C), targets: (N,) -> best prefix of the selection order by accuracy."""
    return select_accuracy(OOFView(probs, targets), iterations, sorted_init)


def select_accuracy(view: OOFView, iterations: int, sorted_init: int = 0) -> Selection:
    """The view's (m, n, C) rows -> best prefix of the selection order by accuracy.

    The ensemble's argmax is that of the running sum of the chosen probabilities (dividing
    by the count changes no argmax). Scores are integer counts of right rows, so ties are
    exact.
    """
    m = view.m
    state = _AccuracyState(view)
    used = np.zeros(m, dtype=bool)
    order: list[int] = []
    trajectory: list[float] = []
    init: list[int] = []
    if sorted_init:
        init = _sorted_init(single_scores(None, view.correct), min(sorted_init, m))
    for j in init:
        state.add(j)
        used[j] = True
        order.append(j)
        trajectory.append(-float(state.n_correct()))
    for _ in range(iterations - len(order)):
        counts = state.correct_counts()
        best = _pick(counts, used, better_low=False)
        state.add(best)
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
