"""The Ray trial function: one (candidate, fold) job through the shared trainer, checkpointed."""

from __future__ import annotations

import logging
from typing import Any

from .checkpoint import report_with_state, restored_state
from .config import SweepConfig, candidate_id, with_train_overrides
from .planner import job_of
from .store import PredictionStore
from .train import run_trial

__all__ = ["trial"]


def trial(config: dict[str, Any], sweep_cfg: SweepConfig, stage: str) -> None:
    """One Ray trial (`config` as `planner.trial_config` makes it), checkpointed each epoch.

    A (candidate, fold) already in the store is reported from its manifest and not trained.
    """
    from ray import tune

    # Ray logs every checkpoint at INFO from inside the trial; the table says enough.
    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    job = job_of(config)
    fold = int(job["fold"])
    train_cfg = with_train_overrides(sweep_cfg.train, job["params"], "trial config")
    cid = candidate_id(train_cfg)
    tags = {"candidate_id": cid, "backbone": train_cfg.model.name, "fold": fold}
    store = PredictionStore(sweep_cfg.sweep_dir)
    if store.has_fold(cid, fold):
        # Trained before (another stage, an earlier sweep, or a restart that raced the
        # experiment's own bookkeeping): report what the store has, train nothing.
        m = store.read_manifest(cid, fold)
        tune.report({**m["metrics"], **tags, "epoch": m["epochs_run"],
                     "best_val_acc": m["metrics"]["val_acc"], "skipped": 1})
        return

    run_trial(
        sweep_cfg, train_cfg, fold,
        report=lambda metrics, state: report_with_state({**metrics, **tags, "skipped": 0}, state),
        resume=restored_state(),
        extra_manifest={"stage": stage, "ray_trial_id": tune.get_context().get_trial_id()},
    )
