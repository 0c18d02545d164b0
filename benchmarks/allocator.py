"""The C allocator under the project's own trainer: glibc default, tuned glibc, jemalloc, tcmalloc.

    python benchmarks/allocator.py [--data data/alloc_sketch] [--rounds 2] [--epochs 2]
                                   [--threads 1] [--smoke]

Make the data first (300 train + 20 test JPEGs of 150-900 px, 10 classes, ~20 s):

    python -m sketchtune.demo --preset imagenet-sketch --out data/alloc_sketch \
        --classes 10 --per-class 30 --test-per-class 2

Each variant is one subprocess started with its own environment (glibc reads MALLOC_*_ and
the loader LD_PRELOAD at start-up, so they cannot be changed inside one process), running
`run_trial` of configs/imagenet_sketch.yaml (224 px, the seed's augmentations, FocalLoss,
tta_hflip) with the tiny test_resnet.r160_in1k, random init, fold 0, DataLoader workers 0
(all work in one process, so its rusage is the trial's), seeded alike. Variants run
interleaved, A B C D E A B C D E ..., so machine-load drift spreads over all of them.

* default:  glibc as it starts (SKETCHTUNE_MALLOC=default turns the trainer's mallopt off)
* env:      MALLOC_MMAP_THRESHOLD_/TRIM_THRESHOLD_/TOP_PAD_ in the environment (issue #12)
* mallopt:  nothing set: the trainer's own `tune_malloc()` (sketchtune/allocator.py)
* jemalloc: LD_PRELOAD=libjemalloc.so.2 (Debian libjemalloc2)
* tcmalloc: LD_PRELOAD=libtcmalloc_minimal.so.4 (Debian libtcmalloc-minimal4)

Per run: getrusage(RUSAGE_SELF) around `run_trial` only (after imports and the image cache,
which the parent builds once): minor page faults, user and sys CPU seconds, wall; the
trainer's images_per_s of the last epoch (the training loop alone); peak RSS (ru_maxrss).
Results are printed as Markdown; the medians go in benchmarks/RESULTS-allocator.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORK = ROOT / "benchmarks" / "_work" / "allocator"
LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
VARIANTS: dict[str, dict[str, str]] = {
    "default": {"SKETCHTUNE_MALLOC": "default"},
    "env": {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
            "MALLOC_TOP_PAD_": "1073741824"},
    "mallopt": {},
    "jemalloc": {"LD_PRELOAD": str(LIBDIR / "libjemalloc.so.2")},
    "tcmalloc": {"LD_PRELOAD": str(LIBDIR / "libtcmalloc_minimal.so.4")},
}


def overrides(data: Path, epochs: int, storage: Path) -> list[str]:
    return [
        f"data.train_csv={data / 'train.csv'}", f"data.test_csv={data / 'test.csv'}",
        f"data.folds_csv={WORK / 'folds.csv'}", "data.num_workers=0",
        "train.model.name=test_resnet.r160_in1k", "train.model.pretrained=false",
        f"train.epochs={epochs}", f"storage_path={storage}", "save_weights=false",
        "search.enabled=false",  # only `train` runs; the search section must still validate
    ]


def child(args: argparse.Namespace) -> None:
    import torch

    from sketchtune.config import load_config
    from sketchtune.prepare import prepare_data
    from sketchtune.train import run_trial

    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "configs" / "imagenet_sketch.yaml", args.set)
    data = prepare_data(cfg, cfg.train.img_size)
    seen: list[dict[str, float]] = []
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run_trial(cfg, cfg.train, 0, data=data, device=torch.device("cpu"),
              report=lambda m, s: seen.append(m))
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    print("RESULT " + json.dumps({
        "minflt": r1.ru_minflt - r0.ru_minflt, "user_s": r1.ru_utime - r0.ru_utime,
        "sys_s": r1.ru_stime - r0.ru_stime, "wall_s": wall,
        "img_s": seen[-1]["images_per_s"], "maxrss_mb": r1.ru_maxrss / 1024,
    }))


def run_variant(name: str, i: int, args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "SKETCHTUNE_MALLOC")}
    env.update(VARIANTS[name], OMP_NUM_THREADS=str(args.threads))
    storage = WORK / f"{name}-{i}"
    shutil.rmtree(storage, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", "--threads", str(args.threads)]
    for s in overrides(Path(args.data).resolve(), args.epochs, storage):
        cmd += ["--set", s]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        sys.exit(f"allocator: variant {name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return {"variant": name, "round": i, **json.loads(line[len("RESULT "):])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT / "data" / "alloc_sketch"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--smoke", action="store_true", help="1 round, 1 epoch")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.smoke:
        args.rounds, args.epochs = 1, 1
    names = args.variants.split(",")
    for n in names:
        pre = VARIANTS[n].get("LD_PRELOAD")
        if pre and not Path(pre).is_file():
            sys.exit(f"allocator: {pre} not found; apt-get install libjemalloc2 "
                     f"libtcmalloc-minimal4, or leave {n} out with --variants")
    WORK.mkdir(parents=True, exist_ok=True)
    # Build the folds and the 224 px image cache once, outside every measured run.
    from sketchtune.config import load_config
    from sketchtune.prepare import prepare_data

    cfg = load_config(ROOT / "configs" / "imagenet_sketch.yaml",
                      overrides(Path(args.data).resolve(), args.epochs, WORK / "prep"))
    prepare_data(cfg, cfg.train.img_size)
    load0 = os.getloadavg()
    rows = []
    for i in range(args.rounds):
        for n in names:
            rows.append(run_variant(n, i, args))
            r = rows[-1]
            print(f"round {i} {n:9s} {r['img_s']:6.1f} img/s  {r['minflt'] / 1e6:6.2f} M faults  "
                  f"user {r['user_s']:6.1f} s  sys {r['sys_s']:5.1f} s  wall {r['wall_s']:6.1f} s"
                  f"  maxrss {r['maxrss_mb']:.0f} MB", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"\n{platform.platform()}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"commit {commit}; load average before {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}, "
          f"after {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}; {args.rounds} rounds x "
          f"{args.epochs} epochs\n")
    print("| variant | img/s (last epoch) | minor faults | user s | sys s | sys share | wall s "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        rs = [r for r in rows if r["variant"] == n]

        def med(k: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[k] for r in rs)

        share = med("sys_s") / (med("sys_s") + med("user_s"))
        each = ", ".join(f"{r['img_s']:.1f}" for r in rs)
        print(f"| {n} | {med('img_s'):.1f} ({each}) "
              f"| {med('minflt') / 1e6:.2f} M | {med('user_s'):.1f} | {med('sys_s'):.1f} "
              f"| {share:.0%} | {med('wall_s'):.1f} | {med('maxrss_mb'):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
