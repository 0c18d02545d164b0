"""Choosing cv candidates by ensemble gain: greedy forward selection on one fold's predictions.

Hyper-deep ensembles (Wenzel et al., NeurIPS 2020): members picked from a search pool by
what they add to the ensemble beat the individually best ones. `greedy_members` is Caruana
et al. (2004)'s forward selection with replacement, stopped when `budget` distinct members
are chosen, on the search fold's validation predictions of every trial that ran to its end.

Why not `ensemble_search.greedy`: that one decides weights (it returns the best prefix of its
rounds and breaks accuracy ties by "already chosen, then lowest index"), while choosing cv
candidates needs the order of first picks up to a budget and a tie-break that does not hang
on trial order: on a few hundred fold-0 rows accuracy ties often, so log loss breaks them.
At this size (tens of trials, one fold) the plain form below takes milliseconds; and
sketchtune does not import ensemble_search, which is built on top of it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["greedy_members"]

_EPS = 1e-15  # the log-loss floor of ensemble_search.metrics (sklearn's and AutoGluon's too)


def _scores(total: np.ndarray, probs: np.ndarray, targets: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate added to the running sum: (M,) rows right, (M,) log loss of the mean."""
    ar = np.arange(len(targets))
    right = np.empty(len(probs), dtype=np.int64)
    loss = np.empty(len(probs))
    for j in range(len(probs)):  # one (N, C) sum at a time: 12 MB at fold-0 size, C = 500
        cand = total + probs[j]
        right[j] = int((cand.argmax(axis=1) == targets).sum())
        loss[j] = -np.log(np.clip(cand[ar, targets] / k, _EPS, None)).mean()
    return right, loss


def greedy_members(probs: np.ndarray, targets: np.ndarray, budget: int,
                   max_rounds: int | None = None) -> list[int]:
    """probs (M, N, C) float, targets (N,) int -> up to `budget` distinct indices, in pick order.

    Each round adds the candidate whose addition to the running average gets the most rows
    right, ties going to the lower log loss, then to the lower index. A candidate chosen
    again (Caruana's replacement: its weight grows) does not use up the budget. After
    `max_rounds` rounds (default 4 x budget) with the budget not yet filled, the rest are
    added the same way from the candidates not yet chosen, so the budget is always filled
    when the pool allows.
    """
    if budget < 1:
        raise ValueError(f"budget must be at least 1 but got {budget}.")
    m = probs.shape[0]
    assert probs.ndim == 3 and targets.shape == probs.shape[1:2], (probs.shape, targets.shape)
    want = min(budget, m)
    rounds = 4 * budget if max_rounds is None else max_rounds
    total = np.zeros(probs.shape[1:], dtype=np.float64)
    picks = 0
    chosen: list[int] = []
    while len(chosen) < want:
        right, loss = _scores(total, probs, targets, picks + 1)
        allowed = np.ones(m, dtype=bool)
        if picks >= rounds:  # stalled on repeats: fill the budget from the rest
            allowed[chosen] = False
        # lexsort's last key is the primary one: most rows right, then lowest loss, then index.
        order = np.lexsort((np.arange(m), loss, -right))
        best = int(next(j for j in order if allowed[j]))
        total += probs[best]
        picks += 1
        if best not in chosen:
            chosen.append(best)
    return chosen
