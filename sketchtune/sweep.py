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

import argparse
import functools
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from .cli import add_debug_argument, base_parser, fail, load_sweep_config, run_cli, setup_logging
from .config import SweepConfig
from .planner import Candidate, config_digest, cv_candidates, describe_trial, pseudo_candidates
from .preflight import preflight
from .stages import StageOutcome, ray_storage, run_cv, run_search
from .store import PredictionStore
from .summary import CandidateSummary, format_table, log_summaries, summarise

__all__ = ["CONFIG_TAG", "SweepError", "main", "run_sweep"]

CONFIG_TAG = "sketchtune.config_digest"  # the parent run's tag: planner.config_digest

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

    `source` names the config in error messages (its file, for the CLI). Raises SweepError
    when a stage's trials failed after their retries, naming the first one's own error.
    """
    from .callback import MlflowSweepCallback
    from .tracking import PARENT_TAG, Tracker, flatten

    pre = preflight(cfg, source, quiet=quiet)
    nodes = _alive_nodes()
    # With a searcher, Tune keeps only one trial pending at a time, which on a small machine
    # leaves slots idle while the next trial's placement group is made; allow one per slot.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(pre.slots))

    tracker = Tracker(cfg.tracking_uri, cfg.name)
    # The parent run is found by the config's digest: the same command after a kill or a
    # failure continues it; a changed config gets a run of its own (MLflow refuses to change
    # a logged param's value, and the old run's params describe the old config).
    parent, _ = tracker.get_or_create_run(
        f"sweep-{cfg.name}", {"stage": "sweep"},
        {PARENT_TAG: "sweep", CONFIG_TAG: config_digest(cfg)}, reuse_failed=True)
    tracker.safe("mark the sweep running", tracker.client.update_run, parent, "RUNNING")
    tracker.log_params(parent, flatten(cfg.model_dump(mode="json", exclude={"train"})))
    store = PredictionStore(cfg.sweep_dir)
    describe = functools.partial(describe_trial, cfg)
    status = "FAILED"
    outcomes: dict[str, StageOutcome] = {}
    retries = f"after {cfg.ray.max_failures} retries"
    try:
        searched: list[Candidate] | None = None
        if cfg.search.enabled and cfg.search.space:
            cb = MlflowSweepCallback(tracker, parent, "search", store, describe)
            searched = run_search(cfg, [cb], quiet, outcomes, pre.tables)
            o = outcomes["search"]
            if not searched:  # every trial failed: nothing to rank, cv would train nothing
                raise SweepError(
                    f"search: none of its {o.trials} trial(s) finished ({o.errors} failed "
                    f"{retries}); the first one's error: {o.first_error}", [])
        chosen = cv_candidates(cfg, searched, pre.fixed)
        cb = MlflowSweepCallback(tracker, parent, "cv", store, describe)
        run_cv(cfg, chosen, [cb], quiet, outcomes, pre.tables)
        if cfg.pseudo.enabled and not getattr(outcomes.get("cv"), "errors", 0):
            extra, why = pseudo_candidates(cfg, store)
            if why:
                _log.warning(why)
            if extra:
                cb = MlflowSweepCallback(tracker, parent, "pseudo", store, describe)
                run_cv(cfg, extra, [cb], quiet, outcomes, pre.tables, stage="pseudo")
                chosen = chosen + extra
        summaries = summarise(cfg, chosen)
        log_summaries(tracker, parent, summaries)
        for stage in ("cv", "pseudo"):
            o = outcomes.get(stage)
            if o is not None and o.errors:
                raise SweepError(
                    f"{o.errors} {stage} trial(s) failed {retries}; the first one's error: "
                    f"{o.first_error}. Fix the cause and run the same command again: finished "
                    f"folds are kept (trial logs: {ray_storage(cfg)})", summaries)
        if "search" in outcomes and outcomes["search"].errors:
            _log.warning("%d search trial(s) failed and were left out of the ranking; the "
                         "first one's error: %s", outcomes["search"].errors,
                         outcomes["search"].first_error)
        status = "FINISHED"
        return summaries
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C; SIGTERM (ray.init makes it sys.exit)
        status = "KILLED"
        raise
    finally:
        # What the stages queued is written before the parent run ends and before the warning
        # counts the failures (bounded: a server that stopped answering is given up on).
        tracker.close()
        tracker.end(parent, status)
        _say_lost_nodes(nodes, cfg.ray.max_failures)
        if pre.started_ray:
            _disconnect()
        if tracker.failures:
            _log.warning("MLflow: %d tracking call(s) failed (%s); the prediction store is "
                         "complete regardless", len(tracker.failures),
                         ", ".join(sorted(set(tracker.failures))))


def _alive_nodes() -> dict[str, str]:
    """The Ray nodes alive now: node id -> IP ({} without a Ray)."""
    import ray

    if not ray.is_initialized():
        return {}
    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}


def _say_lost_nodes(before: dict[str, str], max_failures: int) -> None:
    """One line on what Ray's crash output (a raylet's stack trace, "node died") was about:
    the nodes that were alive when the sweep started and are gone now."""
    try:
        alive = _alive_nodes()
    except Exception:  # noqa: BLE001 - a head that is gone: Ray's own error says it
        return
    lost = [f"{ip} ({node[:8]})" for node, ip in before.items() if node not in alive]
    if lost:
        _log.warning("Ray lost %d node(s) during the sweep: %s; the trials running there were "
                     "retried from their last checkpoint (up to ray.max_failures=%d times; "
                     "their lost attempts are FAILED runs in MLflow)", len(lost),
                     ", ".join(lost), max_failures)


def _disconnect() -> None:
    """Leave Ray (a local one stops) once the trials' last log lines are printed, so that
    they come before the sweep's summary, not after it: Ray forwards them in batches."""
    import ray

    time.sleep(0.5)  # what ray.shutdown waits for the same reason when Python exits
    ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    prog = "sketchtune.sweep"
    p = base_parser(prog, "Run a sweep: Optuna search (ASHA early stopping) on one fold, then "
                          "the top configs per backbone on every fold; resumes when re-run.")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (stages, trials, epochs, resources, estimated disk) "
                        "and exit; writes nothing: no folds, caches, MLflow or Ray")
    add_debug_argument(p)
    args = p.parse_args(argv)
    setup_logging(args.quiet, prog)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "a new study created", per stage
    return run_cli(prog, functools.partial(_main, prog), args)


def _main(prog: str, args: argparse.Namespace) -> int:
    cfg = load_sweep_config(args)
    if args.dry_run:
        from .dryrun import describe_plan

        print(describe_plan(cfg, str(args.config)))
        return 0
    try:
        summaries = run_sweep(cfg, str(args.config), quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except SweepError as err:
        if err.summaries:
            print(format_table(err.summaries, cfg.data.n_folds))
        fail(prog, err)
        return 1
    print()
    print(format_table(summaries, cfg.data.n_folds))
    where = cfg.sweep_dir / "candidates"  # joined, not "/"-glued: a URI may end in ?options
    print(f"\npredictions: {where}    MLflow: {_ui_hint(cfg.tracking_uri)}")
    # The same config and overrides, quoted, so the line can be pasted as it is.
    again = [str(args.config), *(f"--set={s}" for s in args.set)]
    if args.sweep:
        again.append(f"--sweep={args.sweep}")
    print(f"next: python -m ensemble_search.optimize {shlex.join(again)}")
    return 0


def _ui_hint(tracking_uri: str) -> str:
    """The command that shows the sweep in MLflow's UI, shell-quoted."""
    if tracking_uri.startswith("sqlite:///"):
        root = Path(tracking_uri.removeprefix("sqlite:///")).parent
        return f"cd {shlex.quote(str(root))} && mlflow ui --host 127.0.0.1"
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1"


if __name__ == "__main__":
    raise SystemExit(main())
