"""How alike two candidates are: correlation of OOF probabilities, and shared errors.

* `prob_correlation`: Pearson correlation between two candidates' OOF probability
  vectors, each flattened over every (row, class) pair: N * C values per candidate.
  1 = the same probabilities up to scale and shift.
* `error_overlap`: the fraction of train images that both candidates get wrong (argmax
  != target); the diagonal is each candidate's own error rate.
"""

from __future__ import annotations

import numpy as np

__all__ = ["error_overlap", "prob_correlation"]

# Rows per block of the Gram matrix: M * rows * C float32 values at a time (~40 MB at M=40).
_ROWS = 512


def prob_correlation(probs: np.ndarray, rows: int = _ROWS) -> np.ndarray:
    """probs: (M, N, C) -> (M, M) float64 Pearson correlation of the flattened probabilities.

    One pass of blocked float32 matrix products summed in float64: no centred copy of the
    (M, N, C) tensor is made. A constant candidate has correlation 0 with every other one.
    """
    m, n, c = probs.shape
    gram = np.zeros((m, m), dtype=np.float64)
    sums = np.zeros(m, dtype=np.float64)
    for a in range(0, n, rows):
        block = probs[:, a : a + rows].reshape(m, -1)
        gram += block @ block.T
        sums += block.sum(axis=1, dtype=np.float64)
    total = n * c
    mean = sums / total
    cov = gram / total - np.outer(mean, mean)
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(std, std)
    corr[~np.isfinite(corr)] = 0.0
    corr = np.clip(corr, -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    return corr


def error_overlap(correct: np.ndarray) -> np.ndarray:
    """correct: (M, N) bool, argmax == target -> (M, M) fraction of rows both get wrong."""
    wrong = (~correct).astype(np.float32)
    return (wrong @ wrong.T) / correct.shape[1]
