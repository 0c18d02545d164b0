"""The two Tune stages: search (Optuna + ASHA on one fold), then cv (pending jobs, to the end)."""

from __future__ import annotations

import logging
from typing import Any

from .checkpoint import can_restore, restore_tuner
from .config import SweepConfig
from .planner import (
    FOLD_COLUMN,
    Candidate,
    cv_experiment_name,
    cv_param_space,
    max_epochs,
    plan_cv_jobs,
    search_param_space,
    select_candidates,
)
from .store import PredictionStore
from .trainable import trial

__all__ = ["ray_storage", "run_cv", "run_search"]

_log = logging.getLogger(__name__)


def ray_storage(cfg: SweepConfig) -> str:
    """Tune's storage path: one experiment folder per stage under the sweep's folder."""
    return str(cfg.sweep_dir / "ray")


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _tuner(cfg: SweepConfig, stage: str, name: str, param_space: dict[str, Any],
           tune_config, callbacks: list, quiet: bool):
    """The stage's Tuner: restored when its experiment folder exists, else a new one."""
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(trial, sweep_cfg=cfg, stage=stage),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
    )
    path = f"{ray_storage(cfg)}/{name}"
    restored = restore_tuner(stage, path, trainable, param_space)
    if restored is not None:
        return restored
    reporter = tune.CLIReporter(
        metric_columns={"epoch": "epoch", "val_acc": "val_acc", "best_val_acc": "best"},
        parameter_columns={FOLD_COLUMN: "fold"},
        max_report_frequency=15,
        max_column_length=32,
    )
    reporter.add_metric_column("backbone")
    reporter.add_metric_column("candidate_id", "candidate")
    tune_config.trial_name_creator = _trial_name
    tune_config.trial_dirname_creator = _trial_name
    run_config = tune.RunConfig(
        name=name,
        storage_path=ray_storage(cfg),
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
        # One checkpoint per trial: the latest epoch's state, which carries the best weights.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=0 if quiet else cfg.ray.verbose,
        progress_reporter=None if quiet else reporter,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=run_config)


def run_search(cfg: SweepConfig, callbacks: list, quiet: bool,
               failures: dict[str, int] | None = None) -> list[Candidate]:
    """Stage 1: Optuna + ASHA on one fold; returns the configs for cv (`search.select`).

    `failures["search"]` gets the number of trials that failed even after their retries.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    s = cfg.search
    scheduler = None
    if s.asha:
        # stop_last_trials=False: a trial reaching max_t must still write its predictions.
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_epochs(cfg),
                                  grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                                  stop_last_trials=False)
    mode = "max" if s.metric == "val_acc" else "min"
    tune_config = tune.TuneConfig(
        metric=s.metric, mode=mode,
        search_alg=OptunaSearch(seed=cfg.train.seed),
        scheduler=scheduler, num_samples=s.num_samples,
        max_concurrent_trials=cfg.ray.max_concurrent_trials,
        reuse_actors=cfg.ray.reuse_actors,
    )
    results = _tuner(cfg, "search", "search", search_param_space(cfg), tune_config, callbacks,
                     quiet).fit()
    if failures is not None:
        failures["search"] = results.num_errors
    return select_candidates(cfg, results, PredictionStore(cfg.sweep_dir))


def run_cv(cfg: SweepConfig, candidates: list[Candidate], callbacks: list, quiet: bool,
           failures: dict[str, int] | None = None) -> None:
    """Stage 2: every chosen candidate on every fold, to the end (failures as in run_search)."""
    from ray import tune

    name = cv_experiment_name(candidates)
    jobs = plan_cv_jobs(cfg, candidates, PredictionStore(cfg.sweep_dir))
    if not jobs and not can_restore(f"{ray_storage(cfg)}/{name}"):
        _log.info("cv: every (candidate, fold) is already in the store")
        return
    tune_config = tune.TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_trials,
                                  reuse_actors=cfg.ray.reuse_actors)
    # One grid point per pending (candidate, fold): Ray's grid search over whole jobs.
    results = _tuner(cfg, "cv", name, cv_param_space(jobs), tune_config, callbacks, quiet).fit()
    if failures is not None:
        failures["cv"] = results.num_errors
