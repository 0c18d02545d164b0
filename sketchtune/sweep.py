"""The Ray Tune driver: `python -m sketchtune.sweep configs/sweep.yaml`.

Stage "search": OptunaSearch (TPE, seeded) samples the YAML's search space on one fold and
ASHA stops weak trials early. Stage "cv": the top-k configs per backbone plus any fixed
candidates, times every fold, run to the end; (candidate, fold) pairs already in the
prediction store are not trained again. Both stages resume with `Tuner.restore`.

The jobs live in modules of their own: preflight (checks), cluster (Ray start-up), planner
(candidates, ranking, cv jobs), stages (the Tuners), trainable (the trial), checkpoint
(resume), callback (MLflow), summary (the table).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from .cli import base_parser, fail, load_sweep_config, setup_logging
from .config import SweepConfig
from .planner import Candidate, cv_candidates, describe_trial
from .preflight import preflight
from .stages import ray_storage, run_cv, run_search
from .store import PredictionStore
from .summary import CandidateSummary, format_table, log_summaries, summarise
from .train import USER_ERRORS

__all__ = ["SweepError", "main", "run_sweep"]

_log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    """Trials failed even after their retries; the sweep's other results stand."""

    def __init__(self, message: str, summaries: list[CandidateSummary]):
        super().__init__(message)
        self.summaries = summaries


def run_sweep(
    cfg: SweepConfig, source: str = "config", quiet: bool = False
) -> list[CandidateSummary]:
    """Both stages, tracked in MLflow; returns one summary per chosen candidate.

    `source` names the config in error messages (its file, for the CLI).
    """
    from .callback import MlflowSweepCallback
    from .tracking import PARENT_TAG, Tracker, flatten

    pre = preflight(cfg, source, quiet=quiet)
    # With a searcher, Tune keeps only one trial pending at a time, which on a small machine
    # leaves slots idle while the next trial's placement group is made; allow one per slot.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(pre.slots))

    tracker = Tracker(cfg.tracking_uri, cfg.name)
    parent, _ = tracker.get_or_create_run(
        f"sweep-{cfg.name}", {"stage": "sweep"}, {PARENT_TAG: "sweep"}, reuse_failed=True)
    tracker.safe("mark the sweep running", tracker.client.update_run, parent, "RUNNING")
    tracker.log_params(parent, flatten(cfg.model_dump(mode="json", exclude={"train"})))
    store = PredictionStore(cfg.sweep_dir)
    describe = functools.partial(describe_trial, cfg)
    status = "FAILED"
    failed: dict[str, int] = {}
    try:
        searched: list[Candidate] | None = None
        if cfg.search.enabled and cfg.search.space:
            cb = MlflowSweepCallback(tracker, parent, "search", store, describe)
            searched = run_search(cfg, [cb], quiet, failed)
        chosen = cv_candidates(cfg, searched, pre.fixed)
        cb = MlflowSweepCallback(tracker, parent, "cv", store, describe)
        run_cv(cfg, chosen, [cb], quiet, failed)
        summaries = summarise(cfg, chosen)
        log_summaries(tracker, parent, summaries)
        if failed.get("cv"):
            raise SweepError(
                f"{failed['cv']} cv trial(s) failed after {cfg.ray.max_failures} retries; their "
                f"errors are under {ray_storage(cfg)}. Fix the cause and run the same command "
                "again: finished folds are kept", summaries)
        if failed.get("search"):
            _log.warning("%d search trial(s) failed and were left out of the ranking",
                         failed["search"])
        status = "FINISHED"
        return summaries
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(parent, status)
        if tracker.failures:
            _log.warning("MLflow: %d tracking call(s) failed (%s); the prediction store is "
                         "complete regardless", len(tracker.failures),
                         ", ".join(sorted(set(tracker.failures))))


def main(argv: list[str] | None = None) -> int:
    prog = "sketchtune.sweep"
    p = base_parser(prog, "Run a sweep: Optuna search (ASHA early stopping) on one fold, then "
                          "the top configs per backbone on every fold; resumes when re-run.")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (stages, trials, epochs, resources, estimated disk) "
                        "and exit; writes nothing: no folds, caches, MLflow or Ray")
    args = p.parse_args(argv)
    setup_logging(args.quiet, prog)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "a new study created", per stage
    from .tracking import TrackingError

    try:
        cfg = load_sweep_config(args)
        if args.dry_run:
            from .plan import describe_plan

            print(describe_plan(cfg, str(args.config)))
            return 0
        summaries = run_sweep(cfg, str(args.config), quiet=args.quiet)
    except (*USER_ERRORS, TrackingError) as err:
        return fail(prog, err)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except SweepError as err:
        print(format_table(err.summaries, cfg.data.n_folds))
        fail(prog, err)
        return 1
    print()
    print(format_table(summaries, cfg.data.n_folds))
    root = Path(cfg.tracking_uri.removeprefix("sqlite:///")).parent \
        if cfg.tracking_uri.startswith("sqlite:///") else None
    ui = (f"cd {root} && mlflow ui --host 127.0.0.1" if root
          else f"mlflow ui --backend-store-uri {cfg.tracking_uri} --host 127.0.0.1")
    print(f"\npredictions: {cfg.sweep_dir}/candidates    MLflow: {ui}")
    print(f"next: python -m ensemble_search.optimize {args.config}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
