"""The two Tune stages: search (Optuna + ASHA on one fold), then cv (pending jobs, to the end)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .config import SweepConfig, search_max_epochs
from .errors import USER_ERRORS, first_line, root_cause
from .planner import (
    Candidate,
    cv_experiment_name,
    cv_param_space,
    plan_cv_jobs,
    search_experiment_name,
    search_param_space,
    select_candidates,
)
from .prepare import Tables
from .progress import alive_nodes, build_reporter
from .resume import can_restore, restore_tuner
from .store import PredictionStore
from .trainable import trial

__all__ = ["StageOutcome", "describe_error", "ray_storage", "run_cv", "run_search"]

_log = logging.getLogger(__name__)


def ray_storage(cfg: SweepConfig) -> str:
    """Tune's storage path: one experiment folder per stage under the sweep's folder."""
    return str(cfg.sweep_dir / "ray")


@dataclass(frozen=True)
class StageOutcome:
    """How a stage's trials ended: how many ran, failed after every retry, and the first
    failed trial's own error (one line), which names the cause when all of them failed."""

    trials: int
    errors: int
    first_error: str | None


def describe_error(err: BaseException | str) -> str:
    """One line for a trial's error: the trial's own exception, not Ray's wrapper of it. A
    user error (a config, data or weights problem) is its message; anything else its type too."""
    if not isinstance(err, BaseException):  # a restored experiment may hold the error as text
        return first_line(str(err), 300)
    root = root_cause(err)
    text = first_line(root, 300)
    return text if isinstance(root, USER_ERRORS) else f"{type(root).__name__}: {text}"


def _outcome(results) -> StageOutcome:
    errors = [r.error for r in results if r.error is not None]
    return StageOutcome(len(results), len(errors),
                        describe_error(errors[0]) if errors else None)


class _OncePerCause(logging.Filter):
    """Tune logs a failed trial's whole traceback at every attempt; one line per root cause
    says the same (the stage's end names it again; SKETCHTUNE_DEBUG=1 keeps Tune's output)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith("Trials did not complete"):
            return False  # the sweep's own last line says which failed and why
        if not (msg.startswith("Trial task failed") and record.exc_info):
            return True
        text = describe_error(record.exc_info[1])
        if text in self.seen:
            return False
        self.seen.add(text)
        record.msg, record.args = f"{msg}: {text} (the same error is not repeated)", ()
        record.exc_info = record.exc_text = None
        return True


@contextmanager
def _trial_errors_once() -> Iterator[None]:
    if os.environ.get("SKETCHTUNE_DEBUG", "") not in ("", "0"):
        yield
        return
    f = _OncePerCause()
    loggers = [logging.getLogger(n) for n in ("ray.tune.execution.tune_controller",
                                              "ray.tune.tune")]
    for lg in loggers:
        lg.addFilter(f)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(f)


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _tuner(cfg: SweepConfig, stage: str, name: str, param_space: dict[str, Any],
           tune_config, callbacks: list, quiet: bool, tables: Tables | None):
    """The stage's Tuner: restored when its experiment folder exists, else a new one."""
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(trial, sweep_cfg=cfg, stage=stage, tables=tables),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
    )
    restored = restore_tuner(stage, cfg.sweep_dir / "ray", name, trainable, param_space)
    if restored is not None:
        return restored
    reporter = None if quiet else build_reporter(nodes=alive_nodes())
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
        progress_reporter=reporter,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=run_config)


def run_search(cfg: SweepConfig, callbacks: list, quiet: bool,
               outcomes: dict[str, StageOutcome] | None = None,
               tables: Tables | None = None) -> list[Candidate]:
    """Stage 1: Optuna + ASHA on one fold; returns the configs for cv (`search.select`).

    `outcomes["search"]` gets how its trials ended (failed ones: after every retry).
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from .asha import FinishingASHA

    s = cfg.search
    scheduler = None
    if s.asha:
        # stop_last_trials=False: a trial reaching max_t must still write its predictions;
        # FinishingASHA: nor may a rung that sits on a trial's last epoch stop it there.
        scheduler = FinishingASHA(time_attr="training_iteration", max_t=search_max_epochs(cfg),
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
    tuner = _tuner(cfg, "search", search_experiment_name(cfg), search_param_space(cfg),
                   tune_config, callbacks, quiet, tables)
    results = _fit(tuner)
    if outcomes is not None:
        outcomes["search"] = _outcome(results)
    return select_candidates(cfg, results, PredictionStore(cfg.sweep_dir))


def _fit(tuner):
    """`tuner.fit()`, raising KeyboardInterrupt when Tune stopped it before its trials ended.

    Tune catches Ctrl-C (SIGINT) itself, saves the experiment and returns normally, with
    trials still pending or running: the sweep must not then go on as if the stage were done
    (and exit 0); it stops, and the same command resumes it.
    """
    with _trial_errors_once():
        results = tuner.fit()
    if results.num_terminated + results.num_errors < len(results):
        raise KeyboardInterrupt
    return results


def run_cv(cfg: SweepConfig, candidates: list[Candidate], callbacks: list, quiet: bool,
           outcomes: dict[str, StageOutcome] | None = None, tables: Tables | None = None,
           stage: str = "cv") -> None:
    """Stage 2: every chosen candidate on every fold, to the end (outcomes as in run_search);
    stage pseudo is the same with its own candidates and name."""
    from ray import tune

    name = cv_experiment_name(candidates, cfg, stage)
    jobs = plan_cv_jobs(cfg, candidates, PredictionStore(cfg.sweep_dir))
    if not jobs and not can_restore(str(cfg.sweep_dir / "ray" / name)):
        _log.info("%s: every (candidate, fold) is already in the store", stage)
        return
    tune_config = tune.TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_trials,
                                  reuse_actors=cfg.ray.reuse_actors)
    # One grid point per pending (candidate, fold): Ray's grid search over whole jobs.
    tuner = _tuner(cfg, stage, name, cv_param_space(jobs), tune_config, callbacks, quiet,
                   tables)
    results = _fit(tuner)
    if outcomes is not None:
        outcomes[stage] = _outcome(results)
