"""The honest estimate: each method fitted on k-1 folds' OOF rows, scored on the held-out fold.

Weights fitted on every OOF row and scored on the same rows are optimistic (the method
chose them knowing the answers). Here the method runs inside an outer split over the
training folds: for fold k it sees only the rows of the other folds, and its weights
are scored on fold k's rows. Every row is scored exactly once, by weights that never
saw it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from .methods import EnsembleMethod, by_cost, fit_view
from .metrics import EPS
from .oofview import OOFView, RowFacts

__all__ = ["HonestScore", "honest_estimate"]

_log = logging.getLogger(__name__)


@dataclass
class HonestScore:
    """One method's held-out scores; fold lists follow `folds` (sorted fold ids)."""

    log_loss: float  # mean over every row, each scored by weights fitted without its fold
    acc: float
    folds: list[int] = field(default_factory=list)
    fold_log_loss: list[float] = field(default_factory=list)
    fold_acc: list[float] = field(default_factory=list)
    fold_weights: list[np.ndarray] = field(default_factory=list)  # (M,) each


def honest_estimate(
    probs: np.ndarray,
    targets: np.ndarray,
    folds: np.ndarray,
    methods: Mapping[str, Callable[[], EnsembleMethod]],
    facts: RowFacts | None = None,
    pool: Executor | None = None,
) -> dict[str, HonestScore]:
    """probs: (M, N, C) float32, targets: (N,), folds: (N,) -> {method name: HonestScore}.

    `methods` maps a name to a factory of fresh, unfitted methods. Each fits on a view of
    the other folds' rows (`OOFView`, no copy) and is scored on the held-out rows from the
    per-row facts; facts: `RowFacts(probs, targets)` if the caller has them already.
    pool: run the (fold, method) fits on this executor's threads (numpy on large arrays
    releases the GIL); each writes only its own rows and the scores are gathered in fold
    order, so the result is the same as without one.
    """
    n = probs.shape[1]
    fold_ids = [int(k) for k in np.unique(folds)]
    if fold_ids[0] < 0:
        raise ValueError(f"fold ids must be non-negative but got {fold_ids[0]}.")
    if len(fold_ids) < 2:
        raise ValueError(f"the honest estimate needs at least 2 folds but got {fold_ids}.")
    facts = RowFacts(probs, targets) if facts is None else facts
    if pool is not None:
        facts.prepare()  # computed once here, not raced for by the threads
    p_true = {name: np.empty(n) for name in methods}
    right = {name: np.empty(n, dtype=bool) for name in methods}

    views = {k: (OOFView(probs, targets, np.flatnonzero(folds != k), facts=facts),
                 OOFView(probs, targets, np.flatnonzero(folds == k), facts=facts))
             for k in fold_ids}

    def one_job(k: int, name: str) -> tuple[float, float, np.ndarray]:
        fit_rows, held_rows = views[k]
        method = fit_view(methods[name](), fit_rows)
        pt, ok = method.score_view(held_rows)
        held = held_rows.rows
        p_true[name][held], right[name][held] = pt, ok  # this fold's rows only
        return (float(-np.log(np.clip(pt, EPS, None)).mean()), float(ok.mean()),
                np.asarray(method.weights_, dtype=np.float64).copy())

    # One job per (fold, method), not per fold: on a pool, small jobs leave no thread idle
    # while another finishes a whole fold at the end. Each writes only its fold's rows of its
    # method's arrays, and the scores are gathered in fold order, so the result is the same.
    # Costliest methods first (`EnsembleMethod.cost`; a longest-first order leaves the short
    # fits to fill the threads at the end).
    jobs = [(k, name) for name in by_cost(list(methods)) for k in fold_ids]
    done = [one_job(k, name) for k, name in jobs] if pool is None else \
        [f.result() for f in [pool.submit(one_job, k, name) for k, name in jobs]]
    per_fold: list[dict[str, tuple[float, float, np.ndarray]]] = [{} for _ in fold_ids]
    for (k, name), score in zip(jobs, done, strict=True):
        per_fold[fold_ids.index(k)][name] = score
    per_fold = [{name: scores[name] for name in methods} for scores in per_fold]  # as given
    for k in fold_ids:
        _log.info("honest estimate: fold %d done (%d fit rows, %d held out)", k,
                  views[k][0].n, views[k][1].n)
    out = {name: HonestScore(0.0, 0.0, folds=fold_ids) for name in methods}
    for scores in per_fold:  # in fold order, whatever order the threads finished in
        for name, (loss, acc, weights) in scores.items():
            out[name].fold_log_loss.append(loss)
            out[name].fold_acc.append(acc)
            out[name].fold_weights.append(weights)
    for name, s in out.items():
        s.log_loss = float(-np.log(np.clip(p_true[name], EPS, None)).mean())
        s.acc = float(right[name].mean())
    return out
