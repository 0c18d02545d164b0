"""Ensemble search over a sketchtune sweep's out-of-fold predictions.

`load_oof` -> `compare_methods` (every registered method, honest estimates, the choice) ->
`ensemble_summary` (ensemble.json); the CLIs are `python -m ensemble_search.optimize` and
`.predict`. A new ensemble method is one `EnsembleMethod` subclass that sets `name`.
"""

from sketchtune.errors import EnsembleError

from .comparison import Comparison, compare_methods, ensemble_summary, flat_metrics
from .correlation import error_overlap
from .load import OOFSet, load_oof, load_test_probs, read_train_rows
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

__all__ = [
    "METHODS",
    "BestSingle",
    "Comparison",
    "EnsembleError",
    "EnsembleMethod",
    "GreedyEnsemble",
    "HonestScore",
    "MeanEnsemble",
    "OOFSet",
    "OptimizedEnsemble",
    "PrunedEnsemble",
    "build_method",
    "compare_methods",
    "ensemble_summary",
    "error_overlap",
    "flat_metrics",
    "honest_estimate",
    "load_oof",
    "load_test_probs",
    "read_train_rows",
]
