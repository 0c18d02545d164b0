"""Some rows (and candidates) of the OOF probabilities, seen without copying them.

`OOFView(probs, targets)` stands for `probs[cands][:, rows]` and `targets[rows]`. Methods
fit through it and the nested estimate scores through it: they read the per-row facts
(`RowFacts`: each candidate's p(true class), best wrong class and whether it is right),
computed once for all N rows and shared by every view of the same arrays, instead of
copying the k-1 training folds of every candidate and recomputing them per fold.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from .metrics import true_class_probs, weighted_probs

__all__ = ["OOFView", "RowFacts"]

# Rows per block when scanning one candidate's (N, C) probabilities: ~2 MB, stays in cache.
_ROWS = 1024
# Undecided rows summed over all classes at a time: 128 x C float64 stays in cache (~2x
# faster than 1024 at C = 500).
_FULL_ROWS = 128


class RowFacts:
    """Facts about every (candidate, row) of probs (M, N, C) that no weight changes.

    Computed on first use (`q` by itself is cheap; the rest need one scan of probs).
    """

    def __init__(self, probs: np.ndarray, targets: np.ndarray) -> None:
        assert probs.ndim == 3 and targets.shape == probs.shape[1:2], (probs.shape, targets.shape)
        self.probs, self.targets = probs, targets

    def prepare(self) -> RowFacts:
        """Compute every fact now: threads that share these facts then only read them."""
        for name in ("q", "_other", "correct"):
            getattr(self, name)
        return self

    @cached_property
    def q(self) -> np.ndarray:
        """(N, M) float64: each candidate's probability of the true class."""
        return true_class_probs(self.probs, self.targets)

    @cached_property
    def _other(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m, n, c = self.probs.shape
        p_other = np.empty((m, n), dtype=np.float64)
        c_other = np.empty((m, n), dtype=np.int64)
        p_second = np.empty((m, n), dtype=np.float64)
        buf = np.empty((min(_ROWS, n), c), dtype=self.probs.dtype)
        for a in range(0, n, _ROWS):
            b = min(a + _ROWS, n)
            ar, y, blk = np.arange(b - a), self.targets[a:b], buf[: b - a]
            for j in range(m):
                np.copyto(blk, self.probs[j, a:b])
                blk[ar, y] = -np.inf
                best = c_other[j, a:b] = blk.argmax(axis=1)
                p_other[j, a:b] = blk[ar, best]
                blk[ar, best] = -np.inf
                p_second[j, a:b] = blk.max(axis=1)
        return p_other, c_other, p_second

    @property
    def p_other(self) -> np.ndarray:
        """(M, N) float64: the highest probability of a wrong class (-inf if C == 1)."""
        return self._other[0]

    @property
    def c_other(self) -> np.ndarray:
        """(M, N) int64: that class (the first one if several tie)."""
        return self._other[1]

    @property
    def p_second(self) -> np.ndarray:
        """(M, N) float64: the highest probability of any other wrong class (-inf if none)."""
        return self._other[2]

    @cached_property
    def correct(self) -> np.ndarray:
        """(M, N) bool: argmax == target, first maximum winning, as `argmax` decides ties."""
        p_true = self.q.T
        return (p_true > self.p_other) | ((p_true == self.p_other) & (self.c_other > self.targets))


class OOFView:
    """probs[cands][:, rows] and targets[rows] of the (M, N, C) arrays, with their facts.

    rows: (n,) int indices into N or None (all); cands: (m,) sorted int indices into M or None.
    """

    def __init__(self, probs: np.ndarray, targets: np.ndarray, rows: np.ndarray | None = None,
                 cands: np.ndarray | None = None, facts: RowFacts | None = None) -> None:
        self.probs, self.all_targets, self.rows, self.cands = probs, targets, rows, cands
        self.facts = RowFacts(probs, targets) if facts is None else facts
        assert self.facts.probs is probs, "facts must describe the same array"

    @property
    def m(self) -> int:
        return self.probs.shape[0] if self.cands is None else len(self.cands)

    @property
    def n(self) -> int:
        return self.probs.shape[1] if self.rows is None else len(self.rows)

    def select(self, cands: np.ndarray) -> OOFView:
        """The same rows, candidates `cands` (sorted indices into this view's candidates)."""
        cands = np.asarray(cands, dtype=np.int64)
        full = cands if self.cands is None else self.cands[cands]
        return OOFView(self.probs, self.all_targets, self.rows, full, self.facts)

    def spread(self, limit: int) -> OOFView:
        """At most `limit` of these rows, every k-th one (all of them if there are no more),
        with the same candidates: a sample spread over the whole view, not its first rows."""
        step = -(-self.n // limit)  # ceil
        if step <= 1:
            return self
        rows = np.arange(0, self.n, step) if self.rows is None else self.rows[::step]
        return OOFView(self.probs, self.all_targets, rows, self.cands, self.facts)

    def _per_cand(self, a: np.ndarray) -> np.ndarray:
        # (M, N) fact -> (m, n), a fresh C-ordered array like a computation on a copy gives.
        if self.cands is not None:
            a = a[self.cands]
        return a if self.rows is None else a[:, self.rows]

    @cached_property
    def targets(self) -> np.ndarray:
        """(n,) int."""
        return self.all_targets if self.rows is None else self.all_targets[self.rows]

    @cached_property
    def q(self) -> np.ndarray:
        """(n, m) float64 true-class probabilities, C-ordered as `true_class_probs` returns."""
        q = self.facts.q
        if self.rows is not None and self.cands is not None:
            return q[np.ix_(self.rows, self.cands)]
        if self.rows is not None:
            return q[self.rows]
        return q if self.cands is None else np.ascontiguousarray(q[:, self.cands])

    @property
    def p_other(self) -> np.ndarray:
        """(m, n) float64."""
        return self._per_cand(self.facts.p_other)

    @property
    def c_other(self) -> np.ndarray:
        """(m, n) int64."""
        return self._per_cand(self.facts.c_other)

    @property
    def p_second(self) -> np.ndarray:
        """(m, n) float64."""
        return self._per_cand(self.facts.p_second)

    @property
    def correct(self) -> np.ndarray:
        """(m, n) bool."""
        return self._per_cand(self.facts.correct)

    def cand_index(self, j: np.ndarray | int) -> np.ndarray | int:
        """Candidate index (or indices) of this view -> index into the full M."""
        return j if self.cands is None else self.cands[j]

    def take(self) -> np.ndarray:
        """(m, n, C) float32: these rows of these candidates (a copy unless that is all)."""
        if self.rows is None and self.cands is None:
            return self.probs
        out = np.empty((self.m, self.n, self.probs.shape[2]), dtype=self.probs.dtype)
        for j in range(self.m):
            p = self.probs[self.cand_index(j)]
            if self.rows is None:
                out[j] = p
            else:
                np.take(p, self.rows, axis=0, out=out[j])
        return out

    def full_weights(self, weights: np.ndarray) -> np.ndarray:
        """(m,) weights of this view's candidates -> (M,) weights of all, zeros elsewhere."""
        if self.cands is None:
            return weights
        w = np.zeros(self.probs.shape[0])
        w[self.cands] = weights
        return w

    def weighted(self, weights: np.ndarray,
                 temperatures: np.ndarray | None = None) -> np.ndarray:
        """(m,) weights (and per-candidate temperatures) -> (n, C) float64 weighted sum of
        these rows (`weighted_probs`)."""
        temps = None if temperatures is None else self.full_weights(temperatures)
        return weighted_probs(self.probs, self.full_weights(weights), self.rows, temps)

    def scores(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(m,) weights -> (n,) float64 p(true class) and (n,) bool argmax == target.

        Exactly what `weighted(weights)` would give, summed in the same order, but from the
        (n, m) facts. One wrong class c* (the heaviest candidate's best) is summed exactly;
        every other wrong class is bounded by summing each candidate's best wrong class other
        than c* (rounding is monotone). A row is right if its true class beats both, wrong if
        c* beats it; only the rows left undecided are summed over all classes.
        """
        w = self.full_weights(np.asarray(weights, dtype=np.float64))
        nz = np.flatnonzero(w)
        f, y = self.facts, self.targets
        rows = np.arange(self.n) if self.rows is None else self.rows
        q = f.q[rows]  # (n, M)
        c_star = f.c_other[nz[int(np.argmax(w[nz]))], rows]
        p_true = np.zeros(self.n)
        at_star = np.zeros(self.n)  # class c*, exactly
        rest = np.zeros(self.n)  # >= every other wrong class
        for j in nz:  # the same order and float64 arithmetic as `weighted_probs`
            p_true += q[:, j] * w[j]
            at_star += self.probs[j, rows, c_star] * w[j]
            c_j = f.c_other[j, rows]
            rest += np.where(c_j == c_star, f.p_second[j, rows], f.p_other[j, rows]) * w[j]
        right = p_true > np.maximum(at_star, rest)
        wrong = (at_star > p_true) | ((at_star == p_true) & (c_star < y))
        todo = np.flatnonzero(~right & ~wrong)
        for a in range(0, len(todo), _FULL_ROWS):
            i = todo[a : a + _FULL_ROWS]
            right[i] = weighted_probs(self.probs, w, rows[i]).argmax(axis=1) == y[i]
        return p_true, right
