"""Ensemble search over a sketchtune sweep's out-of-fold predictions."""
