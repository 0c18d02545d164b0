"""The Ray trial function: one (candidate, fold) job through the shared trainer, checkpointed."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from .allocator import release_memory
from .config import SweepConfig, candidate_id, with_train_overrides
from .errors import StoreError
from .job import LAST_EPOCH, job_of
from .prepare import Tables
from .pseudo import ensemble_json, read_fold_weights
from .resume import report_with_state, restored_state
from .store import PredictionStore
from .train import run_trial

__all__ = ["PROGRESS_EVERY_S", "node_of_this_worker", "trial"]

# How often a trial logs its batches, img/s and ETA. Tune's table shows reported metrics
# only, and a report inside an epoch would count as an ASHA step (training_iteration), so
# the live feedback is a log line, which Ray forwards to the driver's console
# (log_to_driver; off with --quiet). One a minute: an epoch at full scale takes minutes.
PROGRESS_EVERY_S = 60.0


@contextlib.contextmanager
def _trial_log(prefix: str) -> Iterator[None]:
    """sketchtune's INFO lines on this worker's stderr, prefixed with the trial's identity.

    A reused worker runs many trials: the handler goes when the trial does.
    """
    logger = logging.getLogger("sketchtune")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    old = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # once, not again through a root handler Ray may have set up
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]


def node_of_this_worker() -> dict[str, str]:
    """Inside a Ray worker: {"node_id": the Ray node's id (hex), "node_ip": its IP}.

    The IP alone does not name a node: several nodes can share one machine (and one IP).
    `node_ip` is also the key Tune itself fills in every result.
    """
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address()}


def trial(config: dict[str, Any], sweep_cfg: SweepConfig, stage: str,
          tables: Tables | None = None) -> None:
    """One Ray trial (`config` as `planner.trial_config` makes it), checkpointed each epoch.

    A (candidate, fold) already in the store is reported from its manifest and not trained.
    `tables`: the CSVs and folds the driver read and checked (read here when not given).
    """
    from ray import tune

    # Ray logs every checkpoint at INFO from inside the trial; the table says enough.
    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    job = job_of(config)
    fold = int(job["fold"])
    train_cfg = with_train_overrides(sweep_cfg.train, job["params"], "trial config")
    cid = candidate_id(train_cfg)
    # Where this attempt runs: every result carries it (the MLflow callback tags the run with
    # it) and so does the fold's manifest. A trial retried after its node was lost reports
    # the node of the attempt that finished it.
    where = node_of_this_worker()
    tags = {"candidate_id": cid, "backbone": train_cfg.model.name, "fold": fold, **where}
    store = PredictionStore(sweep_cfg.sweep_dir)
    if store.trained(train_cfg, fold):
        # Trained before (another stage, an earlier sweep, or a restart that raced the
        # experiment's own bookkeeping), every prediction set of it: report what the store
        # has, train nothing.
        m = store.read_manifest(cid, fold)
        tune.report({**m["metrics"], **tags, "epoch": m["epochs_run"],
                     "best_val_acc": m["metrics"]["val_acc"], "skipped": 1})
        return

    # The worker may be reused (ray.reuse_actors): hand the previous trial's heap back rather
    # than grow from its peak (benchmarks/worker_memory.py). Here as well as at the end: a
    # trial the scheduler stopped leaves through an exception in tune.report, and Ray reuses
    # the worker only if this thread ends within 2 s (TUNE_FUNCTION_THREAD_TIMEOUT_S), too
    # short for a garbage collection on a loaded machine.
    pseudo = None
    if train_cfg.pseudo is not None:
        pseudo = read_fold_weights(ensemble_json(sweep_cfg))
        if pseudo.digest != train_cfg.pseudo.source:
            raise StoreError(f"{pseudo.path}: changed since stage pseudo planned candidate "
                             f"{cid}; run the sweep again to plan it anew")
    release_memory()
    with _trial_log(f"{cid} fold {fold}"):
        run_trial(
            sweep_cfg, train_cfg, fold,
            report=lambda metrics, state: report_with_state(
                {**metrics, **tags, "skipped": 0, LAST_EPOCH: int(
                    state.epoch >= train_cfg.epochs or state.stopped_early)}, state),
            resume=restored_state(),
            extra_manifest={"stage": stage, "ray_trial_id": tune.get_context().get_trial_id(),
                            **where},
            log_every_s=PROGRESS_EVERY_S, tables=tables, pseudo=pseudo,
        )
    release_memory()
