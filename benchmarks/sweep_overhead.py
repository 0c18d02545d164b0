"""Sweep overhead: the same trials through Ray Tune + MLflow and as a plain loop; ASHA's savings.

    python benchmarks/sweep_overhead.py [--smoke] [--trials 4] [--what-if] [--cpus 1]
                                        [--skip-asha | --skip-overhead]
                                        [--seeds 42,43,44] [--set search.KEY=VALUE]

Part 1 (overhead). One sweep config with fixed candidates and no search, so that
candidates x folds = N trials, is run twice, side by side in one invocation, each into a
fresh storage and MLflow folder under benchmarks/_work/ (git-ignored):

* plain: `prepare_data` once, then `run_trial(cfg, candidate.train, fold, data=...)` for
  every (candidate, fold) in this process, with torch.set_num_threads(resources.cpu);
* sweep: `ray.init` (timed on its own, with the arguments run_sweep would use) and then
  `run_sweep(cfg, quiet=True)` end to end: MLflow (a fresh sqlite file), the cv stage's
  Tuner, one Ray actor per trial, a checkpoint per epoch, the prediction store.

Both sides run one trial at a time with the same torch thread count (`resources.cpu: C`,
`ray.max_concurrent_trials: 1`; the loop calls torch.set_num_threads(C)); a one-trial Tune
probe checks the thread count inside a Ray trial. C is 1 unless --cpus says otherwise: on a
2-core machine that other jobs share, two OpenMP threads stall at every barrier when one is
descheduled, and a tiny model's epoch then takes 2-10x longer, at random.

The sweep side is timed through thin wrappers (a subclass of the MLflow callback that notes
when each trial starts, reports and ends; timers around check_tracking, Tracker and
prepare_data), which add microseconds. The sweep side runs with `ray.reuse_actors: true` (the
default) set in its config; `--what-if` runs the sweep a third time with
`ray.reuse_actors: false` (a new Ray actor per trial), to show what actor reuse saves.

Part 2 (ASHA). The search stage (`run_search`) with the shipped demo's `train` and `search`
sections (configs/sweep.yaml: space, num_samples, epochs, warm-up, grace period, reduction
factor) on the default demo data, twice per seed (`--seeds`, `train.seed`, which seeds
Optuna too): `search.asha: true` and `false`. With fewer samples than Optuna TPE's random
start-up (n_startup_trials=10) both runs train the same configs and differ only in what
ASHA stops; training is deterministic for a seed, so a config both runs train to the end
gets the same val_acc. `--set search.grace_period=3` (any dotted train/search key) tries
other defaults. One trial at a time, so ASHA's decisions do not depend on which of two
concurrent trials reports first.

The machine may be shared: wall times move with other processes' load, so each side's
epoch compute (the trainer's own epoch_time_s) is reported beside its wall time, and the
overhead is also given as the difference in non-epoch time, which load moves less.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORK = Path(__file__).resolve().parent / "_work" / "sweep"
SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "sweep.yaml"
RESNET, CONVNEXT = "test_resnet.r160_in1k", "test_convnext.r160_in1k"


# ---------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    demo: dict[str, int]  # make_demo arguments for the overhead part
    img_size: int
    epochs: int
    search_demo: dict[str, int]  # a smaller set for the search stage
    search_img_size: int
    search_epochs: int
    num_samples: int


FULL = Sizes(
    # ~30 s a trial on one core: 500 train / 500 val images at 96 px (~3.1 s an epoch),
    # 9 epochs, then 200 test images.
    demo=dict(classes=10, per_class=100, test_per_class=20, size=96),
    img_size=96, epochs=9,
    # The default demo (300 train / 300 val at 64 px, ~0.7-1 s an epoch): 8 x 6 epochs fit.
    search_demo=dict(classes=10, per_class=60, test_per_class=20, size=64),
    search_img_size=64, search_epochs=6, num_samples=8,
)
SMOKE = Sizes(
    demo=dict(classes=4, per_class=8, test_per_class=2, size=32), img_size=32, epochs=1,
    search_demo=dict(classes=4, per_class=8, test_per_class=2, size=32),
    search_img_size=32, search_epochs=2, num_samples=3,
)


def demo_dir(args: dict[str, int]) -> Path:
    from sketchtune.demo import make_demo

    out = WORK / "demo-c{classes}-p{per_class}-t{test_per_class}-s{size}".format(**args)
    make_demo(out, seed=0, **args)
    return out


def load_sweep_config(path: Path, raw: dict[str, Any]):
    from sketchtune.config import load_config

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def fresh(side: str) -> Path:
    d = WORK / side
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def base_raw(name: str, folder: Path, data: Path, n_folds: int, cpus: int) -> dict[str, Any]:
    return {
        "name": name,
        "storage_path": str(folder / "sweeps"),
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
        "data": {"train_csv": str(data / "train.csv"), "test_csv": str(data / "test.csv"),
                 "n_folds": n_folds, "fold_seed": 42, "num_workers": 0},
        # One trial at a time with `cpus` torch threads, as the plain loop: a fair ratio.
        "resources": {"cpu": cpus, "gpu": 0},
        # A failed trial should show, not be retried into the timings.
        "ray": {"max_concurrent_trials": 1, "max_failures": 0},
    }


def overhead_config(side: str, sizes: Sizes, n_trials: int, cpus: int,
                    reuse_actors: bool = True):
    folder = fresh(f"overhead-{side}")
    raw = base_raw(f"overhead-{side}", folder, demo_dir(sizes.demo), n_folds=2, cpus=cpus)
    # Set, not left to the default, so each column says what it measured.
    raw["ray"]["reuse_actors"] = reuse_actors
    raw["train"] = {"model": {"name": RESNET, "pretrained": False}, "img_size": sizes.img_size,
                    "epochs": sizes.epochs, "batch_size": 32, "patience": sizes.epochs,
                    "optim": {"name": "adamw", "lr": 2.0e-3}}
    raw["search"] = {"enabled": False}
    # Candidates differ by seed only, so every trial does the same amount of work.
    raw["candidates"] = [{"seed": 1 + i} for i in range(n_trials // 2)]
    return load_sweep_config(folder / "sweep.yaml", raw)


def search_config(asha: bool, sizes: Sizes, cpus: int, seed: int, smoke: bool,
                  overrides: dict[str, Any]):
    """The shipped demo's `train` and `search` sections (configs/sweep.yaml), with `seed`.

    Only the data paths, the trial resources and, with --smoke, the sizes are the
    benchmark's own; `overrides` (dotted keys from the command line) try other defaults.
    """
    # Named after the overrides too, so two variants run at once do not share a folder.
    tag = "".join(f"-{k.split('.')[-1]}{v}" for k, v in sorted(overrides.items()))
    side = f"search-{'asha' if asha else 'noasha'}{tag}-seed{seed}"
    folder = fresh(side)
    shipped = yaml.safe_load(SHIPPED.read_text())
    raw = base_raw(side, folder, demo_dir(sizes.search_demo), n_folds=shipped["data"]["n_folds"],
                   cpus=cpus)
    raw["train"] = {**shipped["train"], "seed": seed}
    raw["search"] = {**shipped["search"], "enabled": True, "asha": asha}
    if smoke:
        raw["train"].update(img_size=sizes.search_img_size, epochs=sizes.search_epochs)
        raw["train"]["sched"] = {**raw["train"].get("sched", {}), "warmup_epochs": 0}
        raw["search"].update(num_samples=sizes.num_samples, grace_period=1)
    from sketchtune.config import apply_overrides

    raw = apply_overrides(raw, overrides)
    return load_sweep_config(folder / "sweep.yaml", raw)


# ---------------------------------------------------------------- timeline


@dataclasses.dataclass
class Timeline:
    """When each trial starts, reports and ends (perf_counter seconds), and timed costs."""

    t0: float = dataclasses.field(default_factory=time.perf_counter)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    costs: dict[str, float] = dataclasses.field(default_factory=dict)
    end: float | None = None

    def event(self, kind: str, trial: str, **kw: Any) -> None:
        self.events.append({"kind": kind, "trial": trial, "t": time.perf_counter(), **kw})

    @contextlib.contextmanager
    def cost(self, key: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.costs[key] = self.costs.get(key, 0.0) + time.perf_counter() - t

    def timed(self, key: str, fn):
        def wrapper(*a, **kw):
            with self.cost(key):
                return fn(*a, **kw)
        return wrapper

    def trials(self) -> list[dict[str, Any]]:
        """Per trial, in start order: start, end, epochs and their summed epoch_time_s."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.events:
            tr = out.setdefault(e["trial"], {"trial": e["trial"], "start": None, "end": None,
                                             "epochs": 0, "epoch_s": 0.0, "epoch_times": []})
            if e["kind"] == "start" and tr["start"] is None:
                tr["start"] = e["t"]
            elif e["kind"] == "result":
                tr["epochs"] = max(tr["epochs"], int(e.get("epoch") or 0))
                tr["epoch_s"] += float(e.get("epoch_time_s") or 0.0)
                tr["epoch_times"].append(float(e.get("epoch_time_s") or 0.0))
                tr["first_result"] = tr.get("first_result", e["t"])
                tr["last_result"] = e["t"]
            elif e["kind"] == "complete":
                tr["end"] = e["t"]
        return sorted(out.values(), key=lambda t: t["start"] or 0.0)

    def summary(self) -> dict[str, Any]:
        trials = self.trials()
        wall = (self.end or time.perf_counter()) - self.t0
        epoch_s = sum(t["epoch_s"] for t in trials)
        spans = [t["end"] - t["start"] for t in trials if t["start"] and t["end"]]
        # The time from one trial's end (or the run's start) to the next one's end: its
        # share of the wall clock, gaps and start-up included.
        shares, prev = [], None
        for t in trials:
            if t["end"] is None:
                continue
            shares.append(t["end"] - (prev if prev is not None else t["start"]))
            prev = t["end"]
        gaps = [b["start"] - a["end"] for a, b in zip(trials, trials[1:], strict=False)
                if a["end"] and b["start"]]
        return {
            "wall_s": wall, "trials": len(trials), "epoch_s": epoch_s,
            "non_epoch_s": wall - epoch_s,
            "before_first_trial_s": (trials[0]["start"] - self.t0) if trials else 0.0,
            "after_last_trial_s": ((self.end or 0) - trials[-1]["end"]) if trials else 0.0,
            "trial_span_s": spans, "trial_share_s": shares, "gap_s": gaps,
            "epoch_s_per_trial": [t["epoch_s"] for t in trials],
            "epochs_per_trial": [t["epochs"] for t in trials],
            "epoch_times": [x for t in trials for x in t["epoch_times"]],
            "costs": dict(self.costs),
        }


class CpuMeter:
    """CPU seconds of this process and of every process it starts (Ray's daemons, workers).

    A thread reads /proc every 0.5 s and keeps each descendant's last utime + stime, so a
    process that lives under 0.5 s, or the last moments of one, can be missed: a lower
    bound. Unlike wall time, it hardly moves with other jobs' load on the machine.
    """

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self) -> None:
        import threading

        self.seen: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuMeter:
        self.self0 = time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._poll()
        self._stop.set()
        self._thread.join()
        self.self_s = time.process_time() - self.self0

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._poll()

    def _poll(self) -> None:
        parent: dict[int, int] = {}
        stat: dict[int, tuple[str, float]] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                raw = (d / "stat").read_text()
            except OSError:
                continue
            name = raw[raw.index("(") + 1:raw.rindex(")")]
            f = raw[raw.rindex(")") + 2:].split()
            parent[int(d.name)] = int(f[1])
            stat[int(d.name)] = (name, (int(f[11]) + int(f[12])) / self.TICK)
        me, kids = os.getpid(), set()
        frontier = [me]
        while frontier:
            p = frontier.pop()
            for c, pp in parent.items():
                if pp == p and c not in kids:
                    kids.add(c)
                    frontier.append(c)
        for c in kids:
            self.names[c], self.seen[c] = stat[c]

    def by_name(self) -> dict[str, float]:
        out: dict[str, float] = {"this process (driver)": self.self_s}
        for pid, cpu in self.seen.items():
            name = self.names[pid]
            name = "ray::trial actors" if name.startswith("ray::Implicit") else name
            out[name] = out.get(name, 0.0) + cpu
        return out

    @property
    def total_s(self) -> float:
        return self.self_s + sum(self.seen.values())


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# ---------------------------------------------------------------- part 1: overhead


def run_plain(cfg) -> dict[str, Any]:
    import torch

    from sketchtune.preflight import check_sweep
    from sketchtune.prepare import prepare_data
    from sketchtune.train import run_trial

    # The Ray trial gets resources.cpu cores; so does the loop.
    torch.set_num_threads(int(cfg.resources.cpu))
    meter = CpuMeter()
    tl = Timeline()
    with meter:
        with tl.cost("prepare_data"):
            candidates = check_sweep(cfg, "plain")
            data = prepare_data(cfg, cfg.train.img_size)
        for c in candidates:
            for fold in range(cfg.data.n_folds):
                tid = f"{c.id}-f{fold}"
                tl.event("start", tid)
                run_trial(cfg, c.train, fold, data=data,
                          report=lambda m, _state, tid=tid: tl.event(
                              "result", tid, epoch=m["epoch"], epoch_time_s=m["epoch_time_s"]))
                tl.event("complete", tid)
        tl.end = time.perf_counter()
    out = tl.summary()
    out["cpu_s"], out["cpu_by"] = meter.total_s, meter.by_name()
    out["torch_threads"] = torch.get_num_threads()
    return out


def _threads_probe(config: dict[str, Any]) -> None:
    import torch
    from ray import tune

    tune.report({"torch_threads": torch.get_num_threads(),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")})


def probe_ray_threads(cfg, folder: Path) -> dict[str, Any]:
    """torch's thread count inside a Ray trial with the sweep's resources (untimed)."""
    from ray import tune

    trainable = tune.with_resources(_threads_probe, {"cpu": cfg.resources.cpu})
    grid = tune.Tuner(trainable, run_config=tune.RunConfig(
        name="threads", storage_path=str(folder / "probe"), verbose=0)).fit()
    m = grid[0].metrics or {}
    return {"torch_threads": m.get("torch_threads"), "omp_num_threads": m.get("omp_num_threads")}


def run_ray_sweep(cfg, folder: Path) -> dict[str, Any]:
    import ray

    import sketchtune.callback as callback_mod
    import sketchtune.cluster as cluster_mod
    import sketchtune.preflight as preflight_mod
    import sketchtune.sweep as sweep_mod
    import sketchtune.tracking as tracking_mod

    tl = Timeline()
    base_cb, base_tracker = callback_mod.MlflowSweepCallback, tracking_mod.Tracker

    class TimedCallback(base_cb):
        """The sweep's own MLflow callback, noting trial events and its own cost."""

        def on_trial_start(self, iteration, trials, trial, **info):
            tl.event("start", trial.trial_id)
            with tl.cost("mlflow_callback"):
                super().on_trial_start(iteration, trials, trial, **info)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not result.get("skipped"):
                tl.event("result", trial.trial_id, epoch=result.get("epoch"),
                         epoch_time_s=result.get("epoch_time_s"))
            with tl.cost("mlflow_callback"):
                super().on_trial_result(iteration, trials, trial, result, **info)

        def on_trial_complete(self, iteration, trials, trial, **info):
            tl.event("complete", trial.trial_id)
            # The callback deletes a finished trial's checkpoints: size the kept one first.
            with contextlib.suppress(Exception):
                files = [f for f in Path(trial.path).glob("checkpoint_*/*") if f.is_file()]
                size = sum(f.stat().st_size for f in files)
                tl.costs["checkpoint_bytes"] = max(tl.costs.get("checkpoint_bytes", 0), size)
            with tl.cost("mlflow_callback"):
                super().on_trial_complete(iteration, trials, trial, **info)

    class TimedTracker(base_tracker):
        def __init__(self, *a, **kw):
            with tl.cost("mlflow_tracker_init"):
                super().__init__(*a, **kw)

    patches = [
        (callback_mod, "MlflowSweepCallback", TimedCallback),
        (tracking_mod, "Tracker", TimedTracker),
        (tracking_mod, "check_tracking", tl.timed("mlflow_check_tracking",
                                                  tracking_mod.check_tracking)),
        (preflight_mod, "prepare_data", tl.timed("prepare_data", preflight_mod.prepare_data)),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    meter = CpuMeter()
    shutdown_s = None
    try:
        try:
            assert not ray.is_initialized()
            with meter:
                tl.t0 = time.perf_counter()
                with tl.cost("ray_init"):
                    # What run_sweep would call itself (it skips its own when Ray is up).
                    ray.init(address=cfg.ray.address, include_dashboard=False,
                             log_to_driver=False, logging_level=logging.WARNING,
                             runtime_env={"env_vars": {"PYTHONPATH": cluster_mod.pythonpath()}})
                summaries = sweep_mod.run_sweep(cfg, "benchmark", quiet=True)
                tl.end = time.perf_counter()
        finally:
            for obj, name, value in saved:
                setattr(obj, name, value)
        missing = [(s.candidate.id, s.folds_done) for s in summaries
                   if s.folds_done != cfg.data.n_folds]
        if missing:
            raise RuntimeError(f"sweep trials failed (candidate, folds done): {missing}; "
                               f"see {cfg.sweep_dir}/ray")
        out = tl.summary()
        out["cpu_s"], out["cpu_by"] = meter.total_s, meter.by_name()
        out.update(probe_ray_threads(cfg, folder))
        out["checkpoint_bytes"] = out["costs"].pop("checkpoint_bytes", 0)
    finally:
        if ray.is_initialized():
            t = time.perf_counter()
            ray.shutdown()
            shutdown_s = time.perf_counter() - t
    out["ray_shutdown_s"] = shutdown_s
    return out


# ---------------------------------------------------------------- part 2: ASHA


def run_search_once(cfg) -> dict[str, Any]:
    import ray
    from ray.tune import Callback

    from sketchtune.config import search_max_epochs as max_epochs
    from sketchtune.job import job_of
    from sketchtune.preflight import check_sweep
    from sketchtune.prepare import prepare_data
    from sketchtune.stages import run_search

    check_sweep(cfg, "search")
    prepare_data(cfg, cfg.train.img_size)  # the cache is built before the clock, as run_sweep does
    seen: dict[str, dict[str, Any]] = {}

    class Recorder(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            tr = seen.setdefault(trial.trial_id, {"params": job_of(trial.config)["params"],
                                                    "epochs": 0, "val_acc": []})
            tr["epochs"] = max(tr["epochs"], int(result.get("epoch", 0)))
            tr["val_acc"].append(float(result.get("val_acc", float("nan"))))

    assert ray.is_initialized()
    t = time.perf_counter()
    chosen = run_search(cfg, [Recorder()], quiet=True)
    wall = time.perf_counter() - t
    rows = list(seen.values())
    best = max(rows, key=lambda r: max(r["val_acc"]))
    return {
        "asha": cfg.search.asha, "wall_s": wall, "trials": len(rows),
        "trial_epochs": sum(r["epochs"] for r in rows),
        "max_trial_epochs": cfg.search.num_samples * max_epochs(cfg),
        "best_val_acc": max(best["val_acc"]), "best_params": best["params"],
        "chosen": [c.params for c in chosen], "rows": rows,
    }


def run_asha_pair(sizes: Sizes, cpus: int, seed: int, smoke: bool,
                  overrides: dict[str, Any], replay_only: bool = False) -> list[dict[str, Any]]:
    import ray

    from sketchtune.cluster import pythonpath

    cfgs = [search_config(asha, sizes, cpus, seed, smoke, overrides)
            for asha in ((False,) if replay_only else (False, True))]
    ray.init(address=cfgs[0].ray.address, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath()}})
    # As run_sweep does after ray.init: one pending placement group per trial slot.
    slots = int(ray.cluster_resources().get("CPU", 1) // cpus)
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(1, slots)))
    try:
        out = [run_search_once(c) for c in cfgs]
    finally:
        ray.shutdown()
    for r in out:
        r["seed"] = seed
    return out


# ---------------------------------------------------------------- report


def fmt_params(p: dict[str, Any]) -> str:
    name = str(p.get("model.name", "")).split(".")[0].removeprefix("test_")
    return f"{name} lr={p.get('optim.lr', 0):.2g} aug={p.get('aug.strength', 0):.2f}"


def print_overhead(sides: dict[str, dict[str, Any]]) -> None:
    plain = sides["plain"]
    names = list(sides)
    print("\n## Overhead: the same trials, plain loop vs run_sweep\n")
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")

    def row(label: str, fn, fmt: str = "{:.1f}") -> None:
        vals = []
        for n in names:
            try:
                v = fn(sides[n])
            except (KeyError, TypeError, ZeroDivisionError):
                v = None
            vals.append("-" if v is None else (fmt.format(v) if not isinstance(v, str) else v))
        print(f"| {label} | " + " | ".join(vals) + " |")

    row("wall, total (s)", lambda s: s["wall_s"])
    row("ratio to plain (wall)", lambda s: s["wall_s"] / plain["wall_s"], "{:.3f}")
    row("epoch compute, summed epoch_time_s (s)", lambda s: s["epoch_s"])
    row("non-epoch time = wall - epoch compute (s)", lambda s: s["non_epoch_s"])
    row("ratio, load-corrected: 1 + (non-epoch - plain's) / plain wall",
        lambda s: 1 + (s["non_epoch_s"] - plain["non_epoch_s"]) / plain["wall_s"], "{:.3f}")
    row("CPU seconds, this process + all it started", lambda s: s["cpu_s"])
    row("ratio to plain (CPU seconds)", lambda s: s["cpu_s"] / plain["cpu_s"], "{:.3f}")
    row("trials x epochs", lambda s: f"{s['trials']} x {mean(s['epochs_per_trial']):g}", "{}")
    row("per trial: share of wall, mean (s)", lambda s: mean(s["trial_share_s"]))
    row("per trial: span start..end, mean (s)", lambda s: mean(s["trial_span_s"]))
    row("per trial: epoch compute, mean (s)", lambda s: mean(s["epoch_s_per_trial"]))
    row("per trial: non-epoch in span, mean (s)",
        lambda s: mean(s["trial_span_s"]) - mean(s["epoch_s_per_trial"]))
    row("between trials: end..next start, mean (s)", lambda s: mean(s["gap_s"]) if s["gap_s"]
        else None)
    row("epoch_time_s, median (s)",
        lambda s: sorted(s["epoch_times"])[len(s["epoch_times"]) // 2])
    row("before first trial (s)", lambda s: s["before_first_trial_s"])
    row("  of which ray.init (s)", lambda s: s["costs"].get("ray_init"))
    row("  of which MLflow check + new sqlite db (s)",
        lambda s: s["costs"].get("mlflow_check_tracking"))
    row("  of which MLflow Tracker init (s)", lambda s: s["costs"].get("mlflow_tracker_init"))
    row("  of which prepare_data, cache hit (s)", lambda s: s["costs"].get("prepare_data"),
        "{:.2f}")
    row("MLflow callback on the driver, all trials (s)",
        lambda s: s["costs"].get("mlflow_callback"))
    row("after last trial until return (s)", lambda s: s["after_last_trial_s"])
    row("ray.shutdown, not in wall (s)", lambda s: s.get("ray_shutdown_s"))
    row("checkpoint state.pt per trial (MB)", lambda s: s["checkpoint_bytes"] / 1e6
        if s.get("checkpoint_bytes") else None, "{:.2f}")
    row("torch threads in a trial", lambda s: f"{s.get('torch_threads')}"
        + (f" (OMP_NUM_THREADS={s['omp_num_threads']})" if s.get("omp_num_threads") else ""),
        "{}")


def print_cpu(sides: dict[str, dict[str, Any]]) -> None:
    print("\nCPU seconds by process name (descendants polled every 0.5 s):\n")
    for n, s in sides.items():
        parts = sorted(s.get("cpu_by", {}).items(), key=lambda kv: -kv[1])
        print(f"- {n}: " + ", ".join(f"{k} {v:.1f}" for k, v in parts if v >= 0.05))


def print_asha(res: list[dict[str, Any]]) -> None:
    print(f"\n### seed {res[0].get('seed')}: ASHA vs no ASHA (same space and samples; 1 trial "
          "at a time)\n")
    print("| | " + " | ".join("ASHA" if r["asha"] else "no ASHA" for r in res) + " |")
    print("|---|---|---|")
    print("| trial-epochs | " + " | ".join(f"{r['trial_epochs']} of {r['max_trial_epochs']}"
                                          for r in res) + " |")
    print("| wall (s) | " + " | ".join(f"{r['wall_s']:.1f}" for r in res) + " |")
    print("| best val_acc | " + " | ".join(f"{r['best_val_acc']:.4f}" for r in res) + " |")
    print("| best trial | " + " | ".join(fmt_params(r["best_params"]) for r in res) + " |")
    print("| chosen for cv | " + " | ".join("; ".join(fmt_params(p) for p in r["chosen"])
                                            for r in res) + " |")
    print("\nPer trial (sample order): epochs run and best val_acc\n")
    print("| # | config | " + " | ".join("ASHA" if r["asha"] else "no ASHA" for r in res) + " |")
    print("|---|---|---|---|")
    n = max(len(r["rows"]) for r in res)
    for i in range(n):
        cells, cfgs = [], set()
        for r in res:
            if i < len(r["rows"]):
                row = r["rows"][i]
                cfgs.add(fmt_params(row["params"]))
                cells.append(f"{row['epochs']} ep, {max(row['val_acc']):.4f}")
            else:
                cells.append("-")
        print(f"| {i + 1} | {' / '.join(sorted(cfgs))} | " + " | ".join(cells) + " |")


def print_asha_summary(pairs: list[list[dict[str, Any]]]) -> None:
    """One row per seed and the mean: trial-epochs and best val_acc with and without ASHA."""
    print("\n## Search stage over seeds: no ASHA vs ASHA\n")
    print("| seed | trial-epochs, no ASHA | trial-epochs, ASHA (share) | best val_acc, no ASHA "
          "| best val_acc, ASHA | ASHA ran the no-ASHA best to the end |")
    print("|---|---|---|---|---|---|")
    shares, gaps = [], []
    for off, on in pairs:
        share = on["trial_epochs"] / off["trial_epochs"]
        best_off = max(off["rows"], key=lambda r: max(r["val_acc"]))
        kept = any(r["params"] == best_off["params"] and r["epochs"] == best_off["epochs"]
                   for r in on["rows"])
        shares.append(share)
        gaps.append(on["best_val_acc"] - off["best_val_acc"])
        print(f"| {on.get('seed')} | {off['trial_epochs']} | {on['trial_epochs']} ({share:.0%}) "
              f"| {off['best_val_acc']:.4f} | {on['best_val_acc']:.4f} "
              f"| {'yes' if kept else 'no'} |")
    print(f"| **mean** | | **{mean(shares):.0%}** | "
          f"{mean([p[0]['best_val_acc'] for p in pairs]):.4f} | "
          f"{mean([p[1]['best_val_acc'] for p in pairs]):.4f} "
          f"(**{100 * mean(gaps):+.1f} pp**) | |")


def replay_asha(curves: list[list[float]], max_t: int, grace: int, rf: float) -> list[int]:
    """Epochs each trial would run under ASHA: Ray's rule replayed on full val_acc curves.

    The rule of `ray.tune.schedulers.async_hyperband._Bracket` (one bracket, mode max):
    rungs at grace * rf**k below max_t; a trial reaching a rung stops if its val_acc is
    below the (1 - 1/rf) percentile of those recorded there before it. Trials run one at a
    time in sample order, as in part 2, and training is deterministic for a seed, so the
    no-ASHA run's curves say what every setting of grace and rf would have done with the
    same warm-up and epochs (the shipped setting's replay is checked against its real run).
    """
    import numpy as np

    n_rungs = int(np.log(max_t / grace) / np.log(rf) + 1)
    rungs: list[tuple[float, dict[int, float]]] = [
        (grace * rf ** k, {}) for k in reversed(range(n_rungs))]
    ran = []
    for i, curve in enumerate(curves):
        for t, acc in enumerate(curve, 1):
            stop = t >= max_t
            for milestone, recorded in rungs:
                if t >= milestone and i in recorded:
                    break
                if t < milestone or i in recorded:
                    continue
                if recorded and acc < np.nanpercentile(list(recorded.values()),
                                                       (1 - 1 / rf) * 100):
                    stop = True
                recorded[i] = acc
                break
            if stop:
                break
        ran.append(t)
    return ran


def print_replay(pairs: list[list[dict[str, Any]]], max_t: int) -> None:
    """What other grace periods and reduction factors would have done on the same curves."""
    print("\n## ASHA settings replayed on the no-ASHA curves (same warm-up and epochs)\n")
    print("| grace_period | reduction_factor | trial-epochs share (mean) | best val_acc vs no "
          "ASHA (mean) | seeds where the best config ran to the end |")
    print("|---|---|---|---|---|")
    for grace in range(1, max_t):
        for rf in (2, 3, 4):
            shares, gaps, kept = [], [], 0
            for off, *_ in pairs:
                curves = [r["val_acc"] for r in off["rows"]]
                ran = replay_asha(curves, max_t, grace, rf)
                best = max(max(c[:n]) for c, n in zip(curves, ran, strict=True))
                full = max(max(c) for c in curves)
                top = max(range(len(curves)), key=lambda i: max(curves[i]))
                kept += ran[top] == len(curves[top])
                shares.append(sum(ran) / sum(len(c) for c in curves))
                gaps.append(best - full)
            print(f"| {grace} | {rf} | {mean(shares):.0%} | {100 * mean(gaps):+.1f} pp "
                  f"| {kept} of {len(pairs)} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny data, 1 epoch, 2 trials, 3 samples")
    ap.add_argument("--trials", type=int, default=4,
                    help="trials per side: candidates x 2 folds, so an even number")
    ap.add_argument("--what-if", action="store_true",
                    help="also run the sweep with ray.reuse_actors: false (a new Ray actor per "
                         "trial), before the default's reuse_actors: true")
    ap.add_argument("--cpus", type=int, default=1,
                    help="resources.cpu of a trial = torch threads of the plain loop; 1 by "
                         "default: with 2 threads on a 2-core machine that other processes "
                         "share, torch's OpenMP barriers stall and epoch times vary up to 10x")
    ap.add_argument("--skip-asha", action="store_true", help="part 1 only")
    ap.add_argument("--replay-only", action="store_true",
                    help="part 2: run only the no-ASHA search per seed and replay ASHA's rule "
                         "on its curves (half the cost; exact, see replay_asha)")
    ap.add_argument("--out", default="results.json",
                    help="raw figures' file name under benchmarks/_work/sweep/")
    ap.add_argument("--seeds", default="42,43,44",
                    help="comma-separated train.seed values (Optuna's seed too) for part 2; "
                         "each runs the search with and without ASHA")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="part 2: override a dotted key of the shipped train/search sections "
                         "(YAML value), e.g. --set search.grace_period=3")
    ap.add_argument("--skip-overhead", action="store_true", help="part 2 only")
    args = ap.parse_args(argv)
    if args.trials < 2 or args.trials % 2:
        print(f"error: --trials must be an even number >= 2 (candidates x 2 folds) but got "
              f"{args.trials}", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else FULL
    if args.smoke:
        args.trials = 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    t = time.perf_counter()
    import torch

    import sketchtune.sweep  # noqa: F401 - sets Ray's env defaults before Ray is imported
    import sketchtune.train  # noqa: F401
    import_s = time.perf_counter() - t
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{started}; {os.cpu_count()} CPUs, {platform.machine()}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}; imports in this process {import_s:.1f} s "
          f"(paid once by the plain loop, outside its clock)")
    record: dict[str, Any] = {"started": started, "argv": sys.argv[1:], "import_s": import_s}

    if not args.skip_overhead:
        sides: dict[str, dict[str, Any]] = {}
        cfg = overhead_config("plain", sizes, args.trials, args.cpus)
        from sketchtune.prepare import prepare_data

        prepare_data(cfg, cfg.train.img_size)  # build the image cache once, before any clock
        print(f"overhead: {args.trials} trials ({args.trials // 2} candidates x 2 folds), "
              f"{RESNET}, img {sizes.img_size}, {sizes.epochs} epochs, {args.cpus} CPU(s) per "
              f"trial, 1 at a time")
        sides["plain"] = run_plain(cfg)
        print(f"  plain: {sides['plain']['wall_s']:.1f} s (load {os.getloadavg()[0]:.1f})")
        # Each sweep column sets ray.reuse_actors in its config; the what-if one runs first,
        # so the columns read plain | without reuse | with reuse (the default).
        for reuse in ([False, True] if args.what_if else [True]):
            side = "sweep-reuse" if reuse else "sweep-noreuse"
            name = f"run_sweep, reuse_actors={str(reuse).lower()}"
            cfg = overhead_config(side, sizes, args.trials, args.cpus, reuse_actors=reuse)
            sides[name] = run_ray_sweep(cfg, WORK / f"overhead-{side}")
            print(f"  {name}: {sides[name]['wall_s']:.1f} s (load {os.getloadavg()[0]:.1f})")
        record["overhead"] = sides
        print_overhead(sides)
        print_cpu(sides)

    if not args.skip_asha:
        overrides = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or key.split(".")[0] not in ("train", "search"):
                print(f"error: --set wants train.KEY=VALUE or search.KEY=VALUE but got {item!r}",
                      file=sys.stderr)
                return 2
            overrides[key] = yaml.safe_load(value)
        seeds = [int(x) for x in args.seeds.split(",")]
        print(f"\nsearch: {SHIPPED.name}'s train and search sections"
              f"{' (smoke sizes)' if args.smoke else ''}, overrides {overrides or 'none'}, "
              f"seeds {seeds}, data {sizes.search_demo}")
        pairs = []
        for seed in seeds:
            pairs.append(run_asha_pair(sizes, args.cpus, seed, args.smoke, overrides,
                                       args.replay_only))
            print(f"  seed {seed} done (load {os.getloadavg()[0]:.1f})", flush=True)
        record["asha"] = pairs
        record["asha_overrides"] = overrides
        if not args.replay_only:
            for pair in pairs:
                print_asha(pair)
            print_asha_summary(pairs)
        print_replay(pairs, max(len(r["val_acc"]) for r in pairs[0][0]["rows"]))

    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    out = WORK / ("results-smoke.json" if args.smoke else args.out)
    out.write_text(json.dumps(record, indent=1, default=str))
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
