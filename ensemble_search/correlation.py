"""How alike two candidates are: correlation of OOF probabilities, and shared errors.

* `fold_gram` + `corr_from_gram`: Pearson correlation between two candidates' OOF
  probability vectors, each flattened over every (row, class) pair: N * C values per
  candidate, per set of folds. 1 = the same probabilities up to scale and shift.
* `error_overlap`: the fraction of train images that both candidates get wrong (argmax
  != target); the diagonal is each candidate's own error rate.
* `error_correlation`: Pearson (phi) correlation of the two candidates' error indicators:
  1 = they err on exactly the same images, 0 = their errors are unrelated. This is the
  diversity `pruned` uses. The probability correlation is dominated by the true class,
  which every decent model puts high (median pair 0.925 on 40 synthetic candidates), so it
  calls different models duplicates; errors are where models differ.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["corr_from_gram", "error_correlation", "error_overlap", "fold_gram"]

# Rows per block of the Gram matrix: M * rows * C float32 values at a time (~2.5 MB at M=40,
# C=500): the copy, the product and the sums of a block then run in cache (2.2x faster than
# 1024 rows, whose 80 MB block every pass read again from memory).
_ROWS = 32
# Products of tiny softmax outputs underflow to subnormal floats, which slow float32 BLAS
# ~15x. Values are raised to at least this before the product: it moves no correlation.
_FLOOR = 1e-15


def fold_gram(probs: np.ndarray, folds: np.ndarray,
              rows: int = _ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Per fold id f = 0..max: the (M, M) Gram matrix and (M,) sums of its rows' probabilities.

    Sums of these over any set of folds give that set's correlation (`corr_from_gram`) without
    another pass over the data: the nested estimate's k "all but one fold" correlations.
    """
    m, n, c = probs.shape
    k = int(folds.max()) + 1
    gram = np.zeros((k, m, m), dtype=np.float64)
    sums = np.zeros((k, m), dtype=np.float64)
    order = np.argsort(folds, kind="stable")
    bounds = np.searchsorted(folds[order], np.arange(k + 1))
    buf = np.empty(m * min(rows, n) * c, dtype=probs.dtype)  # one block, reused
    floor = probs.dtype.type(_FLOOR)
    # One BLAS thread: a (M, rows * C) product is too thin to split, and on 2 busy cores
    # OpenBLAS's threads spent ~10x the CPU of the product itself waiting for each other.
    with threadpool_limits(1, user_api="blas"):
        for f in range(k):
            idx = order[bounds[f] : bounds[f + 1]]
            for a in range(0, len(idx), rows):
                part = idx[a : a + rows]
                block = buf[: m * len(part) * c].reshape(m, len(part), c)  # contiguous
                if part[-1] - part[0] == len(part) - 1:  # consecutive rows: copy and floor
                    np.maximum(probs[:, part[0] : part[-1] + 1], floor, out=block)  # at once
                else:  # whole rows per candidate: a plain copy, no strided gather
                    for j in range(m):
                        np.take(probs[j], part, axis=0, out=block[j])
                    np.maximum(block, floor, out=block)
                block = block.reshape(m, -1)
                gram[f] += block @ block.T
                # float32 pairwise sums of a few thousand values: ~1e-7 relative, and
                # 3x cheaper than summing in float64
                sums[f] += block.sum(axis=1)
    return gram, sums


def corr_from_gram(gram: np.ndarray, sums: np.ndarray, total: int) -> np.ndarray:
    """(M, M) Gram, (M,) sums over `total` values each -> (M, M) Pearson correlation."""
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


def error_correlation(correct: np.ndarray) -> np.ndarray:
    """correct: (M, N) bool, argmax == target -> (M, M) float64 phi correlation of the errors.

    A candidate that is always right (or always wrong) has no error variance: correlation 0
    with every other one (nothing to share), 1 with itself.
    """
    wrong = (~correct).astype(np.float64)
    m, n = wrong.shape
    both = wrong @ wrong.T / n  # (M, M) P(both wrong), one small product
    rate = wrong.mean(axis=1)
    return corr_from_gram(both * n, rate * n, n)
