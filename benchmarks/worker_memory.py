"""A reused Ray worker's resident memory over many trials, with and without memory given back.

    python benchmarks/worker_memory.py [--trials 20] [--img-size 32] [--variants old,tuned,new]
                                        [--smoke]

Needs the data of benchmarks/allocator.py (data/alloc_sketch: 300 train JPEGs of 150-900 px,
10 classes). Each variant starts its own local Ray with ONE trial slot (`resources.cpu: 1`,
`max_concurrent_trials: 1`, `reuse_actors: True`, as the sweep runs it), and runs `--trials`
trials of the project's own trainable (`sketchtune.trainable.trial`: prepare_data,
run_trial, a checkpoint per epoch, the prediction store) one after another in that one
actor: test_resnet at 32 px (--img-size), 1 epoch, fold 0, each trial a different seed (so
a different candidate: none is skipped from the store). A thin wrapper records, from inside
the trial, the worker's pid, psutil RSS and glibc's heap (mallinfo2) at its start and end.

* old:   glibc defaults and nothing released between trials (the code before this change)
* tuned: the trainer's mallopt tuning (sketchtune/allocator.py), nothing released
* new:   tuned, and the trainable's `release_memory()` (gc + malloc_trim(0)) after each trial

Prints a Markdown table of RSS at each trial's start per variant, and the growth per trial
(least-squares slope over trials 5..N, after the first trials' imports and warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORK = ROOT / "benchmarks" / "_work" / "worker_memory"


def probed_trial(config: dict[str, Any], sweep_cfg: Any, stage: str, log: str,
                 release: bool) -> None:
    """`trainable.trial` with the worker's memory noted at its start and end."""
    import psutil

    import sketchtune.trainable as trainable
    from sketchtune.allocator import heap_in_use

    if not release:
        trainable.release_memory = lambda: None  # the old trainable: nothing handed back

    def note(when: str) -> None:
        heap = heap_in_use() or {}
        # RssAnon is the process's own memory; RssFile includes the touched pages of the
        # memory-mapped image cache, which the page cache shares and can reclaim.
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        kb = {k: int(status[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}
        with open(log, "a") as f:
            f.write(json.dumps({"when": when, "pid": os.getpid(),
                                "rss": psutil.Process().memory_info().rss,
                                "anon": kb["RssAnon"], "file": kb["RssFile"],
                                "arena": heap.get("arena"), "inuse": heap.get("uordblks")})
                    + "\n")

    note("start")
    trainable.trial(config, sweep_cfg, stage)
    note("end")


def run_variant(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One variant in a subprocess of its own (a fresh Ray, its own malloc environment)."""
    env = {k: v for k, v in os.environ.items() if k != "SKETCHTUNE_MALLOC"}
    if name == "old":
        env["SKETCHTUNE_MALLOC"] = "default"  # reaches the worker through cluster.worker_env
    log = WORK / f"{name}.jsonl"
    log.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", name, "--trials", str(args.trials),
           "--data", args.data, "--img-size", str(args.img_size)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"worker_memory: {name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return [json.loads(x) for x in log.read_text().splitlines()]


def child(name: str, args: argparse.Namespace) -> None:
    import ray
    from ray import tune

    from sketchtune.cluster import start_ray
    from sketchtune.config import load_config
    from sketchtune.planner import cv_param_space
    from sketchtune.prepare import prepare_data

    data = Path(args.data).resolve()
    storage = WORK / name
    shutil.rmtree(storage, ignore_errors=True)
    cfg = load_config(ROOT / "configs" / "imagenet_sketch.yaml", [
        f"data.train_csv={data / 'train.csv'}", f"data.test_csv={data / 'test.csv'}",
        f"data.folds_csv={WORK / 'folds.csv'}", "data.num_workers=0",
        "train.model.name=test_resnet.r160_in1k", "train.model.pretrained=false",
        f"train.img_size={args.img_size}", "train.epochs=1", "search.enabled=false",
        f"storage_path={storage}", "save_weights=false", "resources={cpu: 1, gpu: 0}",
    ])
    prepare_data(cfg, cfg.train.img_size)  # the folds and the cache, once, outside the trials
    start_ray(cfg, quiet=True)
    jobs = [{"params": {"seed": s}, "fold": 0} for s in range(args.trials)]
    trainable = tune.with_resources(
        tune.with_parameters(probed_trial, sweep_cfg=cfg, stage="cv",
                             log=str(WORK / f"{name}.jsonl"), release=name == "new"),
        {"cpu": 1})
    tuner = tune.Tuner(
        trainable, param_space=cv_param_space(jobs),
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(storage / "ray"), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    ray.shutdown()
    if errors:
        sys.exit(f"worker_memory: {len(errors)} trial(s) failed: {errors[0]}")


def slope(ys: list[float]) -> float:
    xs = range(len(ys))
    mx, my = sum(xs) / len(ys), sum(ys) / len(ys)
    return (sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
            / sum((x - mx) ** 2 for x in xs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT / "data" / "alloc_sketch"))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--img-size", type=int, default=32, help="train.img_size of every trial")
    p.add_argument("--variants", default="old,tuned,new")
    p.add_argument("--smoke", action="store_true", help="3 trials")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.child, args)
        return 0
    if args.smoke:
        args.trials = 3
    names = args.variants.split(",")
    load0 = os.getloadavg()
    rows = {n: run_variant(n, args) for n in names}
    load1 = os.getloadavg()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, commit {commit}; load average "
          f"before {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}, after {load1[0]:.1f} "
          f"{load1[1]:.1f} {load1[2]:.1f}; {args.trials} trials per variant at "
          f"{args.img_size} px\n")
    starts = {n: [r for r in rows[n] if r["when"] == "start"] for n in names}
    for n in names:
        pids = {r["pid"] for r in rows[n]}
        print(f"- {n}: {len(starts[n])} trials in {len(pids)} worker process(es)")
    print("\nThe worker at each trial's start, MB: RSS = anonymous + file-backed (the mapped "
          "image cache); glibc heap in use / heap size\n")
    print("| trial | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for i in range(args.trials):
        cells = []
        for n in names:
            r = starts[n][i] if i < len(starts[n]) else None
            if r is None:
                cells.append("")
                continue
            mb = {k: (r[k] or 0) / 2**20 for k in ("rss", "anon", "file", "inuse", "arena")}
            cells.append(f"{mb['rss']:.0f} = {mb['anon']:.0f} + {mb['file']:.0f}; "
                         f"{mb['inuse']:.0f} / {mb['arena']:.0f}")
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    for key in ("rss", "anon"):
        print(f"| {key} growth per trial, trials 5.. (MB) | " + " | ".join(
            f"{slope([r[key] / 2**20 for r in starts[n][4:]]):+.1f}" if len(starts[n]) > 5
            else "n/a" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
