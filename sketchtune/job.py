"""What the driver and a trial agree on, torch-free: the trial config's shape and result keys.

One trial config shape for both stages: `{"job": {"params": {dotted key: value}, "fold": k}}`.
The search stage samples `params` (Optuna); the cv stage grids over whole jobs, because the
pending (candidate, fold) pairs are a list, not a product of two axes.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["FOLD_COLUMN", "JOB", "LAST_EPOCH", "Job", "job_of", "trial_config"]

JOB = "job"  # the trial config's one key
FOLD_COLUMN = f"{JOB}/fold"  # the fold's path in a trial config, as Tune's reporter spells it
# Result key: 1 on the report of a trial's last epoch, the planned last or the one early
# stopping ends on (`asha.FinishingASHA` lets that trial finish). Not a metric: the MLflow
# callback logs METRIC_KEYS only.
LAST_EPOCH = "last_epoch"


class Job(TypedDict):
    params: dict[str, Any]  # dotted overrides of the base TrainConfig
    fold: int


def trial_config(params: dict[str, Any], fold: Any) -> dict[str, Any]:
    """A trial config (or a Tune param space, when `params` holds domains)."""
    return {JOB: {"params": params, "fold": fold}}


def job_of(config: dict[str, Any]) -> Job:
    """The (params, fold) job of a trial config made by `trial_config` or the cv grid."""
    return config[JOB]
