"""Stage pseudo's data: ensemble.json's per-fold weights, and fold k's pseudo-labelled images.

Fold k's pseudo-labels come from fold k's own models only (they never saw fold k's
validation rows), averaged with the weights `optimize` fitted without fold k's rows and
calibrated by a temperature fitted the same way (ensemble.json's `fold_weights`). So fold k's
training inputs do not depend on fold k's labels: its out-of-fold predictions, the honest
estimate and `auto` stay honest (tests/test_pseudo.py changes fold k's labels and checks).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import fs
from .config import PseudoLabels, SweepConfig
from .errors import StoreError
from .store import PredictionStore

__all__ = ["FoldWeights", "ensemble_json", "fold_inputs", "read_fold_weights"]


@dataclass(frozen=True)
class FoldWeights:
    """ensemble.json's `fold_weights`: per fold, the (M,) weights of `candidates` and a T."""

    path: fs.Location
    method: str
    candidates: list[str]
    folds: dict[int, tuple[np.ndarray, float]]
    digest: str  # sha256 (16 hex) of the section: a pseudo candidate's `source`

    def ranked(self) -> list[str]:
        """The candidates by their mean weight over the folds, heaviest first; unused ones out."""
        mean = np.mean([w for w, _ in self.folds.values()], axis=0)
        return [self.candidates[j] for j in np.argsort(-mean, kind="stable") if mean[j] > 0]


def ensemble_json(cfg: SweepConfig) -> fs.Location:
    """The ensemble.json stage pseudo reads: `pseudo.ensemble`, else optimize's default."""
    return cfg.pseudo.ensemble or cfg.sweep_dir / "ensemble" / "ensemble.json"


def read_fold_weights(path: fs.Location) -> FoldWeights:
    """The `fold_weights` section of `path`; a StoreError line naming the file otherwise."""
    again = "run python -m ensemble_search.optimize again"
    try:
        d = json.loads(fs.read_bytes(path))
    except FileNotFoundError:
        raise StoreError(f"{path}: not found; run python -m ensemble_search.optimize first "
                         "(stage pseudo labels test images with its per-fold weights)") from None
    except (ValueError, UnicodeDecodeError):
        raise StoreError(f"{path}: not valid JSON; {again}") from None
    sec = d.get("fold_weights") if isinstance(d, dict) else None
    try:
        cands = [str(c) for c in sec["candidates"]]
        folds = {}
        for f in sec["folds"]:
            w, t = np.asarray(f["weights"], dtype=np.float64), float(f["temperature"])
            if w.shape != (len(cands),) or not np.isfinite(w).all() or (w < 0).any() \
                    or w.sum() <= 0 or not (math.isfinite(t) and t > 0):
                raise ValueError
            folds[int(f["fold"])] = (w, t)
        method = str(sec["method"])
    except (TypeError, KeyError, ValueError):
        raise StoreError(f"{path}: no valid fold_weights section (written by optimize since "
                         f"stage pseudo exists); {again}") from None
    digest = hashlib.sha256(json.dumps(sec, sort_keys=True).encode()).hexdigest()[:16]
    return FoldWeights(path, method, cands, folds, digest)


def fold_inputs(store: PredictionStore, fw: FoldWeights, fold: int, test_keys: np.ndarray,
                spec: PseudoLabels, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold `fold`'s pseudo-labelled test images: (rows of `test_keys` (n,), targets).

    targets: (n,) int64 classes (`spec.labels` hard) or (n, C) float32 calibrated
    probabilities (soft). Images whose calibrated top class is below `spec.threshold` are
    left out; at most `max_share` of the epoch's images (with the fold's `n_train` labelled
    rows) are pseudo-labelled, a subset seeded by (seed, fold) when more pass.
    """
    if fold not in fw.folds:
        raise StoreError(f"{fw.path}: fold_weights has no fold {fold}; run "
                         "python -m ensemble_search.optimize again")
    w, t = fw.folds[fold]
    want = pd.Index(test_keys)
    total = None
    for cid, wj in zip(fw.candidates, w, strict=True):
        if wj == 0:
            continue
        f = store.read_fold(cid, fold)
        at = pd.Index(f.test_keys if f.test_keys is not None else []).get_indexer(want)
        if (at < 0).any():
            raise StoreError(f"{store.candidate_dir(cid)}: fold {fold} did not predict "
                             f"{want[at < 0][0]!r} of test.csv; run the sweep's cv again")
        p = wj * f.test_probs[at].astype(np.float64)
        total = p if total is None else total + p
    z = np.log(np.clip(total / w.sum(), 1e-15, None)) / t  # calibrated: softmax(log p / T)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    rows = np.flatnonzero(probs.max(axis=1) >= spec.threshold)
    cap = int(spec.max_share / (1.0 - spec.max_share) * n_train)
    if len(rows) > cap:
        rows = np.sort(np.random.default_rng([seed, fold]).choice(rows, cap, replace=False))
    if spec.labels == "hard":
        return rows, probs[rows].argmax(axis=1).astype(np.int64)
    return rows, probs[rows].astype(np.float32)
