"""The Ray Tune driver: `python -m sketchtune.sweep configs/sweep.yaml`.

Stage "search": OptunaSearch (TPE, seeded) samples the YAML's search space on one fold and
ASHA stops weak trials early. Stage "cv": the top-k configs per backbone plus any fixed
candidates, times every fold, run to the end; (candidate, fold) pairs already in the
prediction store are not trained again. Both stages resume with `Tuner.restore`.
"""

from __future__ import annotations

import os

# The classic table reporter (CLIReporter) honours our column choice; Ray's newer
# output engine ignores `progress_reporter`.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Keeping one checkpoint per trial makes Tune snapshot its state after each checkpoint, which
# is what resume needs; its warning about that would repeat every few seconds.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from .callback import RELEASED  # noqa: E402
from .cli import base_parser, fail, load_sweep_config, setup_logging  # noqa: E402
from .config import (  # noqa: E402
    ConfigError,
    ParamSpec,
    SweepConfig,
    TrainConfig,
    candidate_id,
    with_train_overrides,
)
from .store import PredictionStore  # noqa: E402
from .train import USER_ERRORS, check_train, load_state, prepare_data, run_trial  # noqa: E402

__all__ = ["Candidate", "main", "plan_cv_jobs", "run_sweep", "search_space"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    params: dict[str, Any]  # dotted overrides of the base TrainConfig
    train: TrainConfig
    source: str  # "search", "fixed" or "base"

    @property
    def id(self) -> str:
        return candidate_id(self.train)

    @property
    def backbone(self) -> str:
        return self.train.model.name


# ---------------------------------------------------------------- checks before Ray starts


def _probe_values(spec: ParamSpec) -> list[Any]:
    if spec.type == "choice":
        return list(spec.values or [])
    if spec.type == "int":
        return [int(spec.low), int(spec.high)]
    return [spec.low, spec.high]


def check_sweep(cfg: SweepConfig, source: str) -> list[Candidate]:
    """Validate the search space and fixed candidates against TrainConfig; return the fixed ones.

    Every value a dimension can take at its ends (every choice) is applied to the base config
    and validated, so an unknown key, a wrong range or a backbone timm does not know is one
    line naming the key, before any trial starts.
    """
    check_train(cfg.train, f"{source}: train")
    for key, spec in cfg.search.space.items():
        for value in _probe_values(spec):
            train = with_train_overrides(cfg.train, {key: value},
                                         f"{source}: search.space[{key!r}]={value!r}")
            check_train(train, f"{source}: search.space[{key!r}]")
    if cfg.search.enabled and cfg.search.asha and \
            cfg.search.grace_period <= cfg.train.sched.warmup_epochs:
        _log.warning("%s: search.grace_period=%d is within the %d warm-up epoch(s): ASHA will "
                     "compare trials before their learning rate has warmed up",
                     source, cfg.search.grace_period, cfg.train.sched.warmup_epochs)
    if cfg.search.fold >= cfg.data.n_folds:
        raise ConfigError(f"{source}: search.fold: must be below data.n_folds={cfg.data.n_folds} "
                          f"(got {cfg.search.fold})")
    fixed = []
    for i, overrides in enumerate(cfg.candidates):
        train = with_train_overrides(cfg.train, overrides, f"{source}: candidates[{i}]")
        check_train(train, f"{source}: candidates[{i}]")
        fixed.append(Candidate(dict(overrides), train, "fixed"))
    return fixed



def search_space(space: dict[str, ParamSpec]) -> dict[str, Any]:
    """The YAML's dimensions as Ray Tune domains (OptunaSearch converts them to Optuna's)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, s in space.items():
        if s.type == "choice":
            out[key] = tune.choice(s.values)
        elif s.type == "loguniform":
            out[key] = tune.loguniform(s.low, s.high)
        elif s.type == "uniform":
            out[key] = tune.uniform(s.low, s.high)
        else:  # int: both ends included
            out[key] = tune.randint(int(s.low), int(s.high) + 1)
    return out


def _check_resources(cfg: SweepConfig) -> None:
    import ray

    have = ray.cluster_resources()
    for name, want in (("CPU", cfg.resources.cpu), ("GPU", cfg.resources.gpu)):
        if want > have.get(name, 0):
            raise ConfigError(
                f"resources.{name.lower()}={want}: the Ray cluster has {have.get(name, 0):g} "
                f"{name}(s) in all, so no trial could ever start")


# ---------------------------------------------------------------- the trial


def _trial(config: dict[str, Any], sweep_cfg: SweepConfig, stage: str) -> None:
    """One Ray trial: a (candidate, fold) through the shared trainer, checkpointed each epoch."""
    import torch
    from ray import tune

    config = config.get("job", config)  # cv trials carry one grid point {"params", "fold"}
    # Ray logs every checkpoint at INFO from inside the trial; the table says enough.
    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    fold = int(config["fold"])
    train_cfg = with_train_overrides(sweep_cfg.train, config["params"], "trial config")
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
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = load_state(Path(d) / "state.pt")
        if resume.get(RELEASED):  # a stopped trial whose state was released: start afresh
            resume = None
    latest: dict[str, Any] = {}

    def report(metrics: dict[str, float]) -> None:
        with tempfile.TemporaryDirectory() as d:
            torch.save(latest["state"].state_dict(), Path(d) / "state.pt")
            tune.report({**metrics, **tags, "skipped": 0},
                        checkpoint=tune.Checkpoint.from_directory(d))

    run_trial(
        sweep_cfg, train_cfg, fold, report=report, resume=resume,
        on_state=lambda s: latest.__setitem__("state", s),
        extra_manifest={"stage": stage, "ray_trial_id": tune.get_context().get_trial_id()},
    )


# ---------------------------------------------------------------- stages


def _describe(cfg: SweepConfig):
    def describe(config: dict[str, Any]) -> dict[str, Any]:
        config = config.get("job", config)
        train = with_train_overrides(cfg.train, config.get("params", {}), "trial config")
        return {"candidate_id": candidate_id(train), "backbone": train.model.name,
                "fold": config.get("fold"), "train": train.model_dump(mode="json")}
    return describe


def _tuner(cfg: SweepConfig, stage: str, name: str, param_space: dict[str, Any],
           tune_config, callbacks: list, quiet: bool):
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(_trial, sweep_cfg=cfg, stage=stage),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
    )
    path = f"{_ray_storage(cfg)}/{name}"
    if tune.Tuner.can_restore(path):
        _log.info("resuming %s from %s", stage, path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=param_space)
    reporter = tune.CLIReporter(
        metric_columns={"epoch": "epoch", "val_acc": "val_acc", "best_val_acc": "best"},
        parameter_columns={"fold": "fold"},
        max_report_frequency=15,
        max_column_length=32,
    )
    reporter.add_metric_column("backbone")
    reporter.add_metric_column("candidate_id", "candidate")
    tune_config.trial_name_creator = _trial_name
    tune_config.trial_dirname_creator = _trial_name
    run_config = tune.RunConfig(
        name=name,
        storage_path=_ray_storage(cfg),
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
        # One checkpoint per trial: the latest epoch's state, which carries the best weights.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=0 if quiet else cfg.ray.verbose,
        progress_reporter=None if quiet else reporter,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=run_config)


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _ray_storage(cfg: SweepConfig) -> str:
    return str(cfg.sweep_dir / "ray")


def run_search(cfg: SweepConfig, callbacks: list, quiet: bool,
               failures: dict[str, int] | None = None) -> list[Candidate]:
    """Stage 1: Optuna + ASHA on one fold; returns the top-k configs per backbone.

    `failures["search"]` gets the number of trials that failed even after their retries.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    s = cfg.search
    max_epochs = max([cfg.train.epochs] + [int(v) for v in _probe_values(s.space["epochs"])]
                     if "epochs" in s.space else [cfg.train.epochs])
    scheduler = None
    if s.asha:
        # stop_last_trials=False: a trial reaching max_t must still write its predictions.
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_epochs,
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
    space = {"params": search_space(s.space), "fold": s.fold}
    results = _tuner(cfg, "search", "search", space, tune_config, callbacks, quiet).fit()
    if failures is not None:
        failures["search"] = results.num_errors
    scored = []
    for i, r in enumerate(results):
        if r.error is not None or not r.metrics:
            continue
        train = with_train_overrides(cfg.train, r.config["params"], "search result")
        best = r.metrics.get("best_val_acc", r.metrics.get("val_acc", 0.0))
        reached = r.metrics.get("epoch", 0)
        scored.append((-reached, -best, i, Candidate(dict(r.config["params"]), train, "search")))
    # Like with like: a trial ASHA let run further ranks above one it stopped early (whose
    # val_acc is from fewer epochs); among equals, the higher best val_acc wins.
    top: dict[str, list[Candidate]] = {}
    for *_, c in sorted(scored, key=lambda t: t[:3]):
        chosen = top.setdefault(c.backbone, [])
        if len(chosen) < s.top_k_per_backbone and c.id not in {x.id for x in chosen}:
            chosen.append(c)
    return [c for cs in top.values() for c in cs]


def plan_cv_jobs(cfg: SweepConfig, candidates: list[Candidate],
                 store: PredictionStore) -> list[dict[str, Any]]:
    """(candidate, fold) pairs not yet in the store, as trial configs."""
    return [
        {"params": c.params, "fold": k}
        for c in candidates
        for k in range(cfg.data.n_folds)
        if not store.has_fold(c.id, k)
    ]


def run_cv(cfg: SweepConfig, candidates: list[Candidate], callbacks: list, quiet: bool,
           failures: dict[str, int] | None = None) -> None:
    """Stage 2: every chosen candidate on every fold, to the end (failures as in run_search)."""
    from ray import tune

    store = PredictionStore(cfg.sweep_dir)
    # Named after the candidate set, so re-running the same sweep finds (and restores) the
    # same experiment, while adding a backbone starts a new one for what is new.
    key = hashlib.sha1(json.dumps(sorted(c.id for c in candidates)).encode()).hexdigest()[:8]
    name = f"cv-{key}"
    jobs = plan_cv_jobs(cfg, candidates, store)
    if not jobs and not tune.Tuner.can_restore(f"{_ray_storage(cfg)}/{name}"):
        _log.info("cv: every (candidate, fold) is already in the store")
        return
    tune_config = tune.TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_trials,
                                  reuse_actors=cfg.ray.reuse_actors)
    # One grid point per pending (candidate, fold): Ray's grid search over whole jobs.
    space = {"job": tune.grid_search(jobs)}
    results = _tuner(cfg, "cv", name, space, tune_config, callbacks, quiet).fit()
    if failures is not None:
        failures["cv"] = results.num_errors


# ---------------------------------------------------------------- the whole sweep


class SweepError(RuntimeError):
    """Trials failed even after their retries; the sweep's other results stand."""

    def __init__(self, message: str, summaries: list[CandidateSummary]):
        super().__init__(message)
        self.summaries = summaries


@dataclass(frozen=True)
class CandidateSummary:
    candidate: Candidate
    folds_done: int
    val_acc_mean: float
    val_acc_std: float
    oof_acc: float | None  # over every train row, once all folds are in
    path: Path


def summarise(cfg: SweepConfig, candidates: list[Candidate]) -> list[CandidateSummary]:
    store = PredictionStore(cfg.sweep_dir)
    out = []
    for c in candidates:
        folds = [k for k in store.folds(c.id) if k < cfg.data.n_folds]
        accs = [store.read_manifest(c.id, k)["metrics"]["val_acc"] for k in folds]
        oof = None
        if len(folds) == cfg.data.n_folds:
            hits = n = 0
            for k in folds:
                f = store.read_fold(c.id, k)
                hits += int((f.val_probs.argmax(1) == f.val_targets).sum())
                n += len(f.val_targets)
            oof = hits / max(n, 1)
        out.append(CandidateSummary(
            c, len(folds), float(np.mean(accs)) if accs else float("nan"),
            float(np.std(accs)) if accs else float("nan"), oof, store.candidate_dir(c.id)))
    return out


def _log_summaries(tracker, parent: str, summaries: list[CandidateSummary]) -> None:
    """One MLflow run per complete candidate, under the sweep: fold mean/std, OOF accuracy."""
    from .tracking import flatten

    for s in summaries:
        if s.oof_acc is None:
            continue
        c = s.candidate
        key = {"sketchtune.stage": "summary", "candidate_id": c.id}
        res = tracker.safe("start a summary run", tracker.get_or_create_run,
                           f"candidate-{c.backbone}-{c.id}",
                           {"mlflow.parentRunId": parent, "stage": "summary",
                            "backbone": c.backbone, "source": c.source}, key, True)
        if res is None:
            continue
        run_id, _ = res
        tracker.log_params(run_id, flatten(c.train.model_dump(mode="json")))
        tracker.log_metrics(run_id, {"val_acc_mean": s.val_acc_mean, "val_acc_std": s.val_acc_std,
                                     "oof_acc": s.oof_acc, "folds": s.folds_done}, step=0)
        tracker.set_tags(run_id, {"predictions": str(s.path)})
        tracker.end(run_id)


def format_table(summaries: list[CandidateSummary], n_folds: int) -> str:
    rows = [("candidate", "backbone", "source", "folds", "val_acc (mean±std)", "oof_acc",
             "predictions")]
    for s in sorted(summaries, key=lambda s: -(s.oof_acc or -1)):
        rows.append((s.candidate.id, s.candidate.backbone, s.candidate.source,
                     f"{s.folds_done}/{n_folds}", f"{s.val_acc_mean:.4f}±{s.val_acc_std:.4f}",
                     "-" if s.oof_acc is None else f"{s.oof_acc:.4f}", str(s.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def run_sweep(
    cfg: SweepConfig, source: str = "config", quiet: bool = False
) -> list[CandidateSummary]:
    """Both stages, tracked in MLflow; returns one summary per chosen candidate."""
    import ray

    from .callback import MlflowSweepCallback
    from .tracking import Tracker, check_tracking

    fixed = check_sweep(cfg, source)
    check_tracking(cfg.tracking_uri)
    # Validate the CSVs, make the folds and decode the images once, here, before any trial:
    # every trial then reads the same folds file and memory-maps the same cache.
    # Every img_size known up front (the base, fixed candidates, a choice); a size sampled
    # from a range is decoded by the first trial that asks for it.
    sizes = {cfg.train.img_size, *(c.train.img_size for c in fixed)}
    spec = cfg.search.space.get("img_size")
    if spec is not None and spec.type == "choice":
        sizes |= {int(v) for v in spec.values}
    for size in sorted(sizes):
        prepare_data(cfg, size, progress=not quiet)

    if not ray.is_initialized():
        _start_ray(cfg, quiet)
    _check_resources(cfg)
    # With a searcher, Tune keeps only one trial pending at a time, which on a small machine
    # leaves slots idle while the next trial's placement group is made; allow one per slot.
    slots = int(ray.cluster_resources().get("CPU", 1) // cfg.resources.cpu)
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(1, slots)))

    tracker = Tracker(cfg.tracking_uri, cfg.name)
    parent, _ = tracker.get_or_create_run(
        f"sweep-{cfg.name}", {"stage": "sweep"}, {"sketchtune.role": "sweep"}, reuse_failed=True)
    tracker.safe("mark the sweep running", tracker.client.update_run, parent, "RUNNING")
    tracker.log_params(parent, _flat_sweep(cfg))
    store = PredictionStore(cfg.sweep_dir)
    describe = _describe(cfg)
    status = "FAILED"
    failed: dict[str, int] = {}
    try:
        chosen: list[Candidate] = []
        if cfg.search.enabled and cfg.search.space:
            cb = MlflowSweepCallback(tracker, parent, "search", store, describe)
            chosen = run_search(cfg, [cb], quiet, failed)
        elif not fixed:
            chosen = [Candidate({}, cfg.train, "base")]
        seen = {c.id for c in chosen}
        chosen += [c for c in fixed if c.id not in seen and not seen.add(c.id)]
        cb = MlflowSweepCallback(tracker, parent, "cv", store, describe)
        run_cv(cfg, chosen, [cb], quiet, failed)
        summaries = summarise(cfg, chosen)
        _log_summaries(tracker, parent, summaries)
        if failed.get("cv"):
            raise SweepError(
                f"{failed['cv']} cv trial(s) failed after {cfg.ray.max_failures} retries; their "
                f"errors are under {_ray_storage(cfg)}. Fix the cause and run the same command "
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


def _start_ray(cfg: SweepConfig, quiet: bool) -> None:
    import ray

    # No address: always a fresh Ray of our own ("local"); a plain ray.init() would join
    # whatever cluster this machine last ran, even a dead one.
    address = cfg.ray.address or "local"
    host, _, port = address.rpartition(":")
    if host and port.isdigit() and "://" not in address:
        # Ray retries an unreachable head for minutes; one quick TCP try says it at once.
        import socket

        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as err:
            why = err.strerror or err
            raise ConfigError(f"ray.address={address!r}: nothing answers there ({why}); start "
                              "the head with `ray start --head --port=...`") from None
    kwargs: dict[str, Any] = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING,
                 # Trials import sketchtune from the driver's source tree, also when it is not
                 # pip-installed (a worker's working directory is its trial's).
                 runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}}, **kwargs)
    except (ConnectionError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        hint = ("start one with `ray start --head`, or leave ray.address unset for a local Ray"
                if cfg.ray.address else "see `ray status`")
        raise ConfigError(f"ray.address={cfg.ray.address!r}: cannot start or join Ray "
                          f"({first}); {hint}") from None


def _flat_sweep(cfg: SweepConfig) -> dict[str, str]:
    from .tracking import flatten

    d = cfg.model_dump(mode="json", exclude={"train"})
    return flatten(d)


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    extra = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{extra}" if extra else root


def main(argv: list[str] | None = None) -> int:
    prog = "sketchtune.sweep"
    p = base_parser(prog, "Run a sweep: Optuna search (ASHA early stopping) on one fold, then "
                          "the top configs per backbone on every fold; resumes when re-run.")
    args = p.parse_args(argv)
    setup_logging(args.quiet, prog)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "a new study created", per stage
    from .tracking import TrackingError

    try:
        cfg = load_sweep_config(args)
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
