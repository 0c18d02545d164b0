"""A temperature per candidate, fitted from the per-row facts without touching (N, C) arrays.

Focal loss leaves a model under-confident: its probabilities are flat even where it is
right, so a log-loss fit of the weights ranks it below a weaker, sharper model. Fitting each
candidate's temperature first (softmax(log p / T_j), Guo et al. 2017, per candidate) puts
every candidate on the scale of its real accuracy before the weights are chosen.

The exact log loss of softmax(s * log p) needs every class of every row at every step. Here
each row is summarised by what `RowFacts` already holds: p(true class), the best and the
second-best wrong class, and the rest of the mass `r` spread evenly over the other C - 3
classes. The normaliser sum_c p_c^s is exact at s = 1 and for the three named classes; the
tail is approximated (it matters little: a sharpened tail vanishes, and the fit only needs
the temperature to a few per cent). Scores are never computed from this: the methods score
calibrated probabilities exactly (`metrics.weighted_probs(..., temperatures=...)`).
"""

from __future__ import annotations

import numpy as np

from .metrics import EPS
from .oofview import OOFView

__all__ = ["calibrated_log_true", "candidate_temperatures", "row_summary"]

# Inverse temperatures searched: T in [1/20, 20], as `methods.fit_temperature`.
_S_MIN, _S_MAX = 1.0 / 20.0, 20.0
_NEWTON_STEPS = 60
# Rows the temperatures are fitted on, spread over the view (`OOFView.spread`). One scalar
# per candidate needs few rows: on 12,000 rows x 40 candidates a 4,000-row spread moved no
# temperature by more than 1.6 % (the fit only needs a few per cent, above) at a fifth of
# the cost (0.34 s -> 0.07 s per fit, six fits per comparison).
_FIT_ROWS = 4096


def row_summary(view: OOFView) -> tuple[np.ndarray, np.ndarray]:
    """(n, m, 4) log values and (4,) log multiplicities: true class, best wrong, second wrong,
    one of the k = C - 3 tail classes holding r / k each. log sum_c p_c^s ~ logsumexp(b + s l)."""
    c = view.probs.shape[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(view.q, EPS, None)  # (n, m)
        p_o = np.clip(view.p_other.T, 0.0, None)  # -inf (no such class) -> 0
        p_2 = np.clip(view.p_second.T, 0.0, None)
        k = max(c - 3, 0)
        tail = np.clip(1.0 - q - p_o - p_2, 0.0, None) / max(k, 1)
        logs = np.log(np.stack([q, p_o, p_2, tail], axis=-1))  # log 0 = -inf: absent
    mult = np.array([0.0, 0.0, 0.0, np.log(k) if k else -np.inf])
    return logs, mult


def _terms(view: OOFView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(4, n, m) log values (one contiguous (n, m) array per term, so a Newton step is a few
    flat passes), the same with -inf replaced by 0 (for the moments), and (4,) multiplicities."""
    logs, mult = row_summary(view)
    lt = np.ascontiguousarray(np.moveaxis(logs, -1, 0))
    return lt, np.where(np.isfinite(lt), lt, 0.0), mult


def _log_norm(lt: np.ndarray, mult: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log Z(s) (n, m) and the weights of the four terms (4, n, m) under softmax(b + s l).

    A hand-written logsumexp over the four terms: scipy's spends most of its time on
    array-API bookkeeping for an axis of length 4 (8x slower here)."""
    z = mult[:, None, None] + s[None, None, :] * lt  # -inf (absent term) stays -inf: s > 0
    top = z.max(axis=0)
    np.subtract(z, top, out=z)
    np.exp(z, out=z)
    tot = z.sum(axis=0)
    z /= tot
    return top + np.log(tot), z


def candidate_temperatures(view: OOFView) -> np.ndarray:
    """(m,) temperature of each candidate minimising its log loss on the view's rows (a
    spread sample of at most `_FIT_ROWS` of them).

    Safeguarded Newton on s = 1/T: the loss is convex in s, so its slope is increasing and
    brackets the minimum; a Newton step that leaves the bracket is replaced by a geometric
    bisection (plain Newton overshoots on flat rows). T is kept in [1/20, 20]. A candidate
    leaves the loop once its step is below 1e-7 relative, so late steps touch only the few
    still moving.
    """
    view = view.spread(_FIT_ROWS)
    lt, fin, mult = _terms(view)
    lo, hi = np.full(view.m, _S_MIN), np.full(view.m, _S_MAX)
    s = np.ones(view.m)
    active = np.arange(view.m)
    for _ in range(_NEWTON_STEPS):
        every = active.size == view.m  # no (4, n, m) copies until some candidate is done
        sa = s[active]
        f = fin if every else fin[:, :, active]
        _, w = _log_norm(lt if every else lt[:, :, active], mult, sa)
        w *= f
        mean_l = w.sum(axis=0)  # (n, a): d log Z / ds
        w *= f
        var_l = w.sum(axis=0) - mean_l**2
        grad = (mean_l - f[0]).mean(axis=0)
        hess = np.clip(var_l.mean(axis=0), 1e-12, None)
        hi[active] = np.where(grad > 0, sa, hi[active])
        lo[active] = np.where(grad <= 0, sa, lo[active])
        la, ha = lo[active], hi[active]
        new = sa - grad / hess
        new = np.where((new > la) & (new < ha), new, np.sqrt(la * ha))
        done = np.abs(new - sa) < 1e-7 * sa
        s[active] = new
        active = active[~done]
        if active.size == 0:
            break
    return 1.0 / s


def calibrated_log_true(view: OOFView, temperatures: np.ndarray) -> np.ndarray:
    """(n, m) log p(true class) of each candidate at its temperature (tail approximated)."""
    lt, _, mult = _terms(view)
    s = 1.0 / np.asarray(temperatures, dtype=np.float64)
    lz, _ = _log_norm(lt, mult, s)
    return s[None, :] * lt[0] - lz
