"""Greedy forward selection with replacement (Caruana et al. 2004): the spec and the fast version.

`greedy_reference` is the specification, written to be read: each round adds the candidate
whose addition to the running average scores best; the returned selection is the best
prefix of the rounds (the first round with the best score). Scores are compared exactly,
unrounded; a tie goes to a candidate already chosen, then to the lowest index, so the
result is deterministic. (AutoGluon's `EnsembleSelection` also prefers a model already
chosen, but rounds scores to 6 decimals after the first round and breaks the remaining
ties at random from its seeded `random_state`: the two agree whenever no scores tie.)

`greedy_log_loss` and `select_accuracy` are the fast versions, tested to return exactly
the reference's selection. Log loss works on the (N, M) true-class matrix only.

Accuracy counts, for each candidate, the rows whose argmax is right once it is added to the
float32 running sum of the chosen rows. Exactness rests on one fact: rounding is monotone, so
if a <= a' and b <= b' then fl(a + b) <= fl(a' + b'), and a bound summed in the same order
as the spec bounds the spec's float sum. Three layers decide, cheapest first:

1. per row, two (n,) bounds: the smallest true-class sum any candidate gives beats the
   largest any wrong class can reach (`hi`, an upper bound carried from round to round by
   adding each pick's best wrong probability), or a wrong class's exact sum already beats
   the largest true-class sum (probabilities are >= 0, so adding never lowers it). Such a
   row is right (wrong) for every candidate: on the benchmark's arrays, 55 % of the rows
   after one round, 90 % after eight, 96 % after twenty.
2. the other rows only: their (n, C) sum is brought up to date (the picks a row missed are
   added in the spec's order, so the sums are the spec's) and scanned for the best wrong
   class and the runner-up; per (row, candidate), the best wrong class's exact sum and a
   bound on every other class decide most pairs.
3. the pairs left: the whole row with the candidate added, as the spec does.

The first round needs none of them: 0 + p == p, so it counts each candidate's own right rows.
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
# Rows of the (n, C) running sum brought up to date and scanned at a time: 0.5 MB at
# C = 500, stays in cache (128 or 512 rows ran no faster).
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

    The sum is kept as its true-class column `r_true` (n,), exact every round, and the rest
    `full` (n, C) with -inf in the true class, where row i holds the first `done[i]` picks
    only: rows are brought up to date when a round cannot decide them without (layer 2 of
    the module docstring). Per row, always: `lo` is the exact sum at wrong class `c_r` and
    `hi` >= the sum at every wrong class. Just after a row is brought up to date, `c_r` is its
    best wrong class (the first if several tie), `lo == hi` and `r_second` >= the sum at every
    other wrong class.
    """

    def __init__(self, view: OOFView) -> None:
        n, c = view.n, view.probs.shape[2]
        self.view, self.y = view, view.targets
        self.cands = np.arange(view.m) if view.cands is None else view.cands
        self.rows = np.arange(n) if view.rows is None else view.rows
        # (n, m) layout: each row's m facts sit together, so the gathers below stay within
        # one row. float32 is exact: the values are the probs'.
        self.p_true = view.q.astype(_SUM)
        self.p_other = np.ascontiguousarray(view.p_other.T, dtype=_SUM)  # -inf if C == 1
        self.c_other = np.ascontiguousarray(view.c_other.T) + (np.arange(n) * c)[:, None]  # flat
        # Per row, over the view's candidates: what any addition can bring at most or least.
        self.q_min, self.q_max = self.p_true.min(axis=1), self.p_true.max(axis=1)
        self.p_max = self.p_other.max(axis=1)
        self.order: list[int] = []
        self.r_true = np.zeros(n, dtype=_SUM)
        self.full = np.zeros((n, c), dtype=_SUM)
        self.full[np.arange(n), self.y] = -np.inf
        self.done = np.zeros(n, dtype=np.int64)  # picks already added to each row of `full`
        # The empty sum: 0 at every wrong class, the first of them c_r; with C == 1 there is
        # none (c_r is the true class, -inf as in `full`).
        self.c_r = (self.y == 0).astype(np.int64) if c > 1 else np.zeros(n, dtype=np.int64)
        self.lo = np.where(self.c_r == self.y, -np.inf, 0).astype(_SUM)
        self.hi = self.lo.copy()
        self.r_second = np.empty(n, dtype=_SUM)  # valid on the rows just refreshed
        self._at_c_r = np.empty((n, view.m), dtype=_SUM)
        self._at_c = np.full(n, -1)  # the class each row of _at_c_r was gathered at

    def add(self, j: int) -> None:
        """Add candidate j (index into the view): exact on r_true and lo, a bound on hi."""
        self.order.append(j)
        self.r_true += self.p_true[:, j]
        self.lo += self.view.probs[self.cands[j], self.rows, self.c_r]
        # Every sum r_c <= hi and p_c <= p_other; rounding is monotone, so
        # fl(r_c + p_c) <= fl(hi + p_other).
        self.hi += self.p_other[:, j]

    def _refresh(self, i: np.ndarray) -> None:
        """Rows i (distinct): add the picks they missed, in order; find c_r and the runner-up."""
        probs, k = self.view.probs, len(self.order)
        for a in range(0, len(i), _ROWS):
            ib = i[a : a + _ROWS]
            blk, lag, src = self.full[ib], self.done[ib], self.rows[ib]
            for t in range(int(lag.min()), k):  # -inf stays -inf in the true class
                p = probs[self.cands[self.order[t]]]
                late = lag <= t
                if late.all():
                    blk += p[src]
                else:
                    blk[late] += p[src[late]]
            ar = np.arange(len(ib))
            c = blk.argmax(axis=1)
            best = blk[ar, c]
            blk[ar, c] = -np.inf
            self.r_second[ib] = blk.max(axis=1)
            blk[ar, c] = best
            self.full[ib], self.done[ib] = blk, k
            self.c_r[ib], self.lo[ib], self.hi[ib] = c, best, best

    def n_correct(self) -> int:
        """Rows whose argmax of the running sum is the target (first maximum wins)."""
        r, y = self.r_true, self.y
        todo = np.flatnonzero((r <= self.hi) & (r >= self.lo))
        self._refresh(todo)
        o = self.lo  # exact on every row where r_true is not strictly above or below it
        return int(((r > o) | ((r == o) & (self.c_r > y))).sum())

    def correct_counts(self) -> np.ndarray:
        """(m,) rows right when each candidate is added to the running sum."""
        if not self.order:  # 0 + p == p exactly: each candidate's own right rows
            return self.view.correct.sum(axis=1)
        # Layer 1. Right whatever is added: the smallest true-class sum beats every wrong
        # class's largest. Wrong whatever is added: class c_r already beats the largest
        # true-class sum (probabilities are >= 0, so adding one never lowers c_r's sum).
        # Strict comparisons: a tie is left to the argmax's first-maximum rule below.
        right = self.r_true + self.q_min > self.hi + self.p_max
        wrong = self.r_true + self.q_max < self.lo
        act = np.flatnonzero(~right & ~wrong)
        self._refresh(act)  # layer 2, on the active rows only
        counts = np.full(len(self.cands), np.count_nonzero(right), dtype=np.int64)
        y, full, rows = self.y[act], self.full, self.rows[act]
        p_true, p_other = self.p_true[act], self.p_other[act]
        # (a, m) each: the same float sums as a full row of the sum with candidate j added.
        true = self.r_true[act, None] + p_true
        # probs[j, row, c_r] per (row, candidate): gathered again only where c_r moved.
        stale = act[self._at_c[act] != self.c_r[act]]
        self._at_c_r[stale] = self.view.probs[self.cands, self.rows[stale, None],
                                              self.c_r[stale, None]]
        self._at_c[stale] = self.c_r[stale]
        at_c_r = self.lo[act, None] + self._at_c_r[act]
        at_c_other = np.take(full, self.c_other[act]) + p_other  # candidate j's best wrong
        # Every other wrong class c has r_c <= r_second and p_c <= p_other; rounding is
        # monotone, so fl(r_c + p_c) <= fl(r_second + p_other): an upper bound on all of them.
        upper = np.maximum(at_c_r, self.r_second[act, None] + p_other)
        lower = np.maximum(at_c_r, at_c_other)
        counts += (true > upper).sum(axis=0)
        nn, jj = np.nonzero((true >= lower) & (true <= upper))  # layer 3
        for a in range(0, len(jj), _CHUNK):
            j, i = jj[a : a + _CHUNK], nn[a : a + _CHUNK]
            row = full[act[i]] + self.view.probs[self.cands[j], rows[i]]
            row[np.arange(len(i)), y[i]] = true[i, j]
            hit = row.argmax(axis=1) == y[i]
            counts += np.bincount(j[hit], minlength=len(counts))
        return counts


def select_accuracy(view: OOFView, iterations: int, sorted_init: int = 0) -> Selection:
    """The view's (m, n, C) rows -> best prefix of the selection order by accuracy.

    The ensemble's argmax is that of the running sum of the chosen probabilities (dividing
    by the count changes no argmax). Scores are integer counts of right rows, so ties are
    exact. The probabilities must be finite and non-negative, as the loader checks.
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
