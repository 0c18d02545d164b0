"""Greedy forward selection with replacement (Caruana et al. 2004): the spec and the fast version.

`greedy_reference` is the specification, written to be read: each round adds the candidate
whose addition to the running average scores best; the returned selection is the best
prefix of the rounds (the first round with the best score). Scores are compared exactly,
unrounded; a tie goes to a candidate already chosen, then to the lowest index, so the
result is deterministic. (AutoGluon's `EnsembleSelection` also prefers a model already
chosen, but rounds scores to 6 decimals after the first round and breaks the remaining
ties at random from its seeded `random_state`: the two agree whenever no scores tie.)

`greedy_log_loss` and `select_accuracy` are the fast versions, tested to return exactly
the reference's selection. Log loss works on the (N, M) true-class matrix only. Accuracy
keeps a running sum of the chosen rows and decides most (candidate, row) pairs from bounds
on the runner-up class; only the undecided pairs are summed in full, so the answer is exact.
"""

from __future__ import annotations

import numpy as np

from .metrics import EPS
from .oofview import OOFView

__all__ = [
    "Selection",
    "greedy_log_loss",
    "greedy_reference",
    "select_accuracy",
    "selection_weights",
    "single_scores",
]

# (candidate, row) pairs summed in full at a time: 2 MB at C = 500, stays in cache (4096
# pairs, 16 MB, ran ~4x slower).
_CHUNK = 512
# Rows of the (n, C) running sum updated at a time: 0.5 MB at C = 500, stays in cache.
_ROWS = 256
# The accuracy running sum's float type, in the spec and the fast version alike. float32, as
# the probabilities are: a sum of <= 25 of them is exact to ~1e-7, far below any margin an
# argmax decides on, and each pass over the (n, C) sum costs half of float64's.
_SUM = np.float32

Selection = list[int]  # candidate indices in the order they were added (repeats allowed)


def greedy_reference(
    probs: np.ndarray, targets: np.ndarray, iterations: int, metric: str = "log_loss",
    sorted_init: int = 0,
) -> Selection:
    """The specification, slow on purpose: probs (M, N, C), targets (N,) -> the selection.

    Each round scores every candidate added to the full (N, C) running sum and keeps the
    best; metric "log_loss" (mean -log p(true class) of the average, floored at EPS) or
    "acc" (rows whose argmax is the target; the first maximum wins; the sum is float32).
    sorted_init: start from this many best single candidates (stable order). Returns the best
    prefix.
    """
    if metric not in ("log_loss", "acc"):
        raise ValueError(f"metric must be 'log_loss' or 'acc' but got {metric!r}.")
    m, n, c = probs.shape
    ar = np.arange(n)

    def loss(total: np.ndarray, k: int) -> float:  # lower is better
        if metric == "log_loss":
            return float(-np.log(np.clip(total[ar, targets] / k, EPS, None)).mean())
        return -float((total.argmax(axis=1) == targets).sum())

    order: list[int] = []
    trajectory: list[float] = []
    total = np.zeros((n, c), dtype=np.float64 if metric == "log_loss" else _SUM)
    if sorted_init:
        singles = [loss(probs[j].astype(np.float64), 1) for j in range(m)]
        for j in np.argsort(singles, kind="stable")[:sorted_init]:
            total = total + probs[j]
            order.append(int(j))
            trajectory.append(loss(total, len(order)))
    for _ in range(iterations - len(order)):
        scores = [loss(total + probs[j], len(order) + 1) for j in range(m)]
        tied = [j for j in range(m) if scores[j] == min(scores)]
        pick = ([j for j in tied if j in order] or tied)[0]
        total = total + probs[pick]
        order.append(pick)
        trajectory.append(scores[pick])
    return order[: int(np.argmin(trajectory)) + 1]


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
    and find each row's best wrong class (`c_r`, value `r_other`) and the runner-up's value
    (`r_second`). No (n, C) copy is made.
    """

    def __init__(self, view: OOFView) -> None:
        n, c = view.n, view.probs.shape[2]
        self.view, self.y, self.ar = view, view.targets, np.arange(n)
        self.cands = np.arange(view.m) if view.cands is None else view.cands
        self.rows = self.ar if view.rows is None else view.rows
        # (n, m) layout: each row's m facts sit together, so the gathers from the (n, C)
        # running sum below stay within one row.
        self.p_true = view.q.astype(_SUM)  # (n, m); exact: the values are the probs'
        self.p_other = np.ascontiguousarray(view.p_other.T, dtype=_SUM)  # (n, m)
        self.c_other = np.ascontiguousarray(view.c_other.T) + (self.ar * c)[:, None]  # flat
        self.r_true = np.zeros(n, dtype=_SUM)
        self.r_wrong = np.zeros((n, c), dtype=_SUM)
        self.r_wrong[self.ar, self.y] = -np.inf
        self.c_r = np.empty(n, dtype=np.int64)
        self.r_other, self.r_second = np.empty(n, dtype=_SUM), np.empty(n, dtype=_SUM)
        self._scan(None)
        # probs[j, row, c_r] per (row, candidate): gathered again only where c_r moved.
        self._at_c_r = self._gather(self.ar)
        self._at_c = self.c_r.copy()

    def _scan(self, p: np.ndarray | None) -> None:
        for a in range(0, len(self.ar), _ROWS):
            blk = self.r_wrong[a : a + _ROWS]
            if p is not None:
                blk += p[self.rows[a : a + _ROWS]]  # -inf stays -inf in the true class
            ar = np.arange(len(blk))
            c = blk.argmax(axis=1)
            best = blk[ar, c]
            blk[ar, c] = -np.inf
            self.r_second[a : a + _ROWS] = blk.max(axis=1)
            blk[ar, c] = best
            self.c_r[a : a + _ROWS], self.r_other[a : a + _ROWS] = c, best

    def _gather(self, i: np.ndarray) -> np.ndarray:
        return self.view.probs[self.cands, self.rows[i][:, None], self.c_r[i][:, None]]

    def add(self, j: int) -> None:
        """Add candidate j (index into the view) to the running sum."""
        self.r_true += self.p_true[:, j]
        self._scan(self.view.probs[self.cands[j]])

    def n_correct(self) -> int:
        """Rows whose argmax of the running sum is the target (first maximum wins)."""
        r, o = self.r_true, self.r_other
        return int(((r > o) | ((r == o) & (self.c_r > self.y))).sum())

    def correct_counts(self) -> np.ndarray:
        """(m,) rows right when each candidate is added to the running sum."""
        y, r_wrong = self.y, self.r_wrong
        moved = np.flatnonzero(self.c_r != self._at_c)
        if len(moved):
            self._at_c_r[moved] = self._gather(moved)
            self._at_c[moved] = self.c_r[moved]
        # (n, m) each: the same float sums as a full row of the sum with candidate j added.
        true = self.r_true[:, None] + self.p_true
        at_c_r = self.r_other[:, None] + self._at_c_r  # class c_r
        at_c_other = np.take(r_wrong, self.c_other) + self.p_other  # candidate j's best wrong
        # Every other wrong class c has r_c <= r_second and p_c <= p_other; rounding is
        # monotone, so fl(r_c + p_c) <= fl(r_second + p_other): an upper bound on all of them.
        upper = np.maximum(at_c_r, self.r_second[:, None] + self.p_other)
        lower = np.maximum(at_c_r, at_c_other)
        counts = (true > upper).sum(axis=0)
        nn, jj = np.nonzero((true >= lower) & (true <= upper))
        for a in range(0, len(jj), _CHUNK):
            j, i = jj[a : a + _CHUNK], nn[a : a + _CHUNK]
            full = r_wrong[i] + self.view.probs[self.cands[j], self.rows[i]]
            full[np.arange(len(i)), y[i]] = true[i, j]
            hit = full.argmax(axis=1) == y[i]
            counts += np.bincount(j[hit], minlength=len(counts))
        return counts


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
