"""Fast scores of probability-averaging ensembles: log loss and accuracy.

With probability averaging, the ensemble's probability of the true class is the
weighted sum of each candidate's probability of the true class, so log loss needs only
the (N, M) true-class matrix `Q = true_class_probs(P, y)`; accuracy needs full rows.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EPS",
    "calibrate",
    "log_loss",
    "log_loss_from_true",
    "true_class_probs",
    "weighted_probs",
]

# Same floor as AutoGluon's and sklearn's log loss: a zero probability costs 34.5 nats, not inf.
EPS = 1e-15


def true_class_probs(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """probs: (M, N, C), targets: (N,) int -> (N, M) float64, each candidate's p(true class)."""
    m, n, _ = probs.shape
    assert targets.shape == (n,), (targets.shape, probs.shape)
    return np.ascontiguousarray(probs[:, np.arange(n), targets].T, dtype=np.float64)


def log_loss_from_true(p_true: np.ndarray) -> float | np.ndarray:
    """Mean negative log of p(true class) over axis 0: (N,) -> float, (N, M) -> (M,)."""
    out = -np.log(np.clip(p_true, EPS, None)).mean(axis=0)
    return float(out) if np.ndim(out) == 0 else out


def log_loss(probs: np.ndarray, targets: np.ndarray) -> float:
    """probs: (N, C), targets: (N,) -> mean log loss (rows are assumed to sum to 1)."""
    return log_loss_from_true(probs[np.arange(len(targets)), targets])


# Rows per block of `weighted_probs`: 256 x C float32 and float64 buffers (~0.8 MB at
# C = 500) stay in cache through a calibration's eight passes and the weighted sum.
_BLOCK_ROWS = 256


def weighted_probs(
    probs: np.ndarray, weights: np.ndarray, rows: np.ndarray | None = None,
    temperatures: np.ndarray | None = None,
) -> np.ndarray:
    """sum_j weights[j] * probs[j, rows] -> (n, C) float64; zero weights cost nothing.

    probs: (M, N, C), weights: (M,), rows: optional (n,) row indices (default: all rows);
    temperatures: optional (M,) per-candidate temperatures, each candidate's probabilities
    are calibrated first (`calibrate`: softmax(log p / T)); None or 1.0 leaves them as they are.
    """
    shape = probs.shape[1:] if rows is None else (len(rows), probs.shape[2])
    out = np.zeros(shape, dtype=np.float64)
    nz = np.flatnonzero(weights)
    # In blocks of rows, every candidate's term for a block before the next block: the
    # calibration's passes and the sum then stay in cache (1.6x faster at 15,000 x 500 with
    # temperatures). Each row's sum is the same float sum, in the same order, as without.
    tmp = np.empty((min(_BLOCK_ROWS, shape[0]), shape[1]), dtype=np.float64)  # reused: a
    for a in range(0, shape[0], _BLOCK_ROWS):  # fresh temporary per term costs page faults
        b = min(a + _BLOCK_ROWS, shape[0])
        sel = slice(a, b) if rows is None else rows[a:b]
        o, t = out[a:b], tmp[: b - a]
        for j in nz:
            part = probs[j, sel]
            if temperatures is not None and temperatures[j] != 1.0:
                part = calibrate(part, float(temperatures[j]))
            np.multiply(part, weights[j], out=t)
            o += t
    return out


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """probs: (N, C) -> softmax(log(probs) / T), (N, C) in probs' float type (float32 from
    the store: its log and exp run ~2x faster than float64's, and 1e-7 relative is far below
    any decision an ensemble makes); T = 1 returns probs.

    Monotone in each row: it never changes which class a row predicts, only how sure it is.
    """
    if temperature == 1.0:
        return probs
    dtype = probs.dtype if probs.dtype in (np.float32, np.float64) else np.float64
    z = np.log(np.clip(probs, dtype.type(EPS), None), dtype=dtype)
    z /= temperature
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
