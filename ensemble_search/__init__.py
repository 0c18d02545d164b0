"""Ensemble search over a sketchtune sweep's out-of-fold predictions.

`load_oof` -> `search` (every method, honest estimates, the choice) -> `ensemble_summary`
(ensemble.json); the CLIs are `python -m ensemble_search.optimize` and `.predict`.
"""

from .correlation import error_overlap, prob_correlation
from .load import EnsembleError, OOFSet, load_oof, load_test_probs, read_train_rows
from .methods import (
    METHODS,
    BestSingle,
    EnsembleMethod,
    GreedyEnsemble,
    MeanEnsemble,
    OptimizedEnsemble,
    PrunedEnsemble,
    build_method,
)
from .nested import HonestScore, honest_estimate
from .search import SearchResult, ensemble_summary, flat_metrics, search

__all__ = [
    "METHODS",
    "BestSingle",
    "EnsembleError",
    "EnsembleMethod",
    "GreedyEnsemble",
    "HonestScore",
    "MeanEnsemble",
    "OOFSet",
    "OptimizedEnsemble",
    "PrunedEnsemble",
    "SearchResult",
    "build_method",
    "ensemble_summary",
    "error_overlap",
    "flat_metrics",
    "honest_estimate",
    "load_oof",
    "load_test_probs",
    "prob_correlation",
    "read_train_rows",
    "search",
]
