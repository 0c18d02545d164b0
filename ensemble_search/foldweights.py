"""Per fold, a method's weights fitted without that fold's rows, and a temperature fitted the
same way: ensemble.json's `fold_weights`, what the sweep's pseudo stage labels test images with.

Fold k's pseudo-labels must not carry fold k's validation labels, or fold k's out-of-fold
score (and every estimate built on it) turns optimistic. The nested estimate already fits
each method on the other folds' rows only; here its fold-k weights are kept, and one
temperature is fitted on the same rows, so the sweep can calibrate the average of fold k's
own models (softmax(log p / T)) before thresholding its confidence.
"""

from __future__ import annotations

import numpy as np

from .base import fit_temperature
from .comparison import Comparison
from .load import OOFSet
from .metrics import weighted_probs

__all__ = ["fold_weights"]

# Rows a temperature is fitted on, at most (evenly spaced): a temperature is one number, and
# at the competition's 12,000 rows x 500 classes per fold a full fit would cost seconds.
_ROWS = 4096


def fold_weights(res: Comparison, oof: OOFSet, method: str) -> dict:
    """ensemble.json's `fold_weights` section for `method` (`pseudo.method` of the config).

    {"method", "candidates": [id...], "folds": [{"fold": k, "weights": [(M,)],
    "temperature": T}...]}; the weights are `method`'s nested fit without fold k, over the
    candidates in `candidates` order; T minimises the log loss of the weighted average on
    (up to _ROWS of) the rows outside fold k.
    """
    honest = res.results[method].honest
    folds = []
    for k, w in zip(honest.folds, honest.fold_weights, strict=True):
        rows = np.flatnonzero(oof.folds != k)
        rows = rows[np.linspace(0, len(rows) - 1, min(_ROWS, len(rows))).astype(int)]
        t = fit_temperature(weighted_probs(oof.probs, w, rows), oof.targets[rows])
        folds.append({"fold": int(k), "weights": [float(x) for x in w], "temperature": t})
    return {"method": method, "candidates": list(oof.candidate_ids), "folds": folds}
