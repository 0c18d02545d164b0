"""The leaders' recipe on the demo, feature by feature, side by side: what each one buys.

    python benchmarks/recipe.py [--seeds 42,43,44] [--variants baseline,ema,...] [--smoke]

Each variant is today's demo recipe (configs/sweep.yaml on the demo data) with some of
issue #19's features turned on, run as a user would: sweep, optimize (and, with `pseudo`,
the sweep's pseudo stage and optimize again), predict; one folder per (variant, seed) under
benchmarks/_work/recipe/ (git-ignored). Per run it records the chosen method's honest
(nested-fold) accuracy, the submission estimate with its interval, the true accuracy of the
submission on the demo's 1,000 held-back test labels, the trial-epochs trained, the wall
time, the candidates the chosen ensemble uses, and the ensemble's gain over its best single
candidate (by OOF accuracy) on the test labels with McNemar's exact test. Results go to
benchmarks/_work/recipe/results.jsonl (a finished run is not repeated) and a table to stdout,
mean +- sd over the seeds. `--smoke` runs one seed of two variants with 2 folds and 1 epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sketchtune.config import apply_overrides  # noqa: E402
from sketchtune.store import PredictionStore  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "recipe"
SHIPPED = ROOT / "configs" / "sweep.yaml"
EMA = {"train.ema.enabled": True}
MIXUP = {"train.mixup.mixup_alpha": 0.2}  # mild: tiny models, 4 epochs from scratch
LAYER_DECAY = {"train.optim.layer_decay": 0.75}
VIEWS = {"train.views": ["hflip", "scale"]}
PSEUDO = {"pseudo.enabled": True}
VARIANTS = {
    "baseline": {},
    "ema": EMA,
    "mixup": MIXUP,
    "layer_decay": LAYER_DECAY,
    "views": VIEWS,
    "pseudo": PSEUDO,
    "views+ema+pseudo": {**VIEWS, **EMA, **PSEUDO},
    "full": {**VIEWS, **EMA, **PSEUDO, **MIXUP, **LAYER_DECAY},
}


def run(cmd: list[str], log: Path) -> float:
    """Run a CLI as a user would (its output to `log`); seconds it took."""
    t0 = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.perf_counter() - t0


def config_file(folder: Path, data: Path, seed: int, overrides: dict, smoke: bool) -> Path:
    raw = yaml.safe_load(SHIPPED.read_text())
    raw.update(name="recipe", storage_path=str(folder / "sweeps"),
               tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    raw["data"].update(train_csv=str(data / "train.csv"), test_csv=str(data / "test.csv"),
                       folds_csv=str(folder / "folds.csv"))
    extra = {"train.seed": seed, **{k: v for k, v in overrides.items()
                                    if not k.startswith("pseudo.")}}
    if smoke:
        extra.update({"data.n_folds": 2, "train.epochs": 1, "search.num_samples": 2,
                      "train.sched.warmup_epochs": 0, "search.top_k_per_backbone": 1})
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(apply_overrides(raw, extra), sort_keys=False))
    return path


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """Exact McNemar p-value of two classifiers' correctness on the same rows."""
    n01, n10 = int((~a & b).sum()), int((a & ~b).sum())
    return 1.0 if n01 + n10 == 0 else binomtest(n10, n01 + n10, 0.5).pvalue


def score(folder: Path, data: Path) -> dict:
    """What the finished run's files say (see the module docstring)."""
    sweep = folder / "sweeps" / "recipe"
    spec = json.loads((sweep / "ensemble" / "ensemble.json").read_text())
    sub = pd.read_csv(sweep / "ensemble" / "submission.csv")
    truth = pd.read_csv(data / "test_labels.csv").set_index("image_path")["target"]
    y = truth.loc[sub["image_path"]].to_numpy()
    ens_right = sub["target"].to_numpy() == y
    store = PredictionStore(sweep)
    cands = pd.read_csv(sweep / "ensemble" / "candidates.csv")
    best = cands.sort_values("oof_acc", ascending=False)["candidate_id"].iloc[0]
    keys = sub["image_path"].to_numpy()
    probs = np.mean([pd.DataFrame(f.test_probs, index=f.test_keys).loc[keys].to_numpy()
                     for f in (store.read_fold(best, k) for k in store.folds(best))], axis=0)
    best_right = probs.argmax(axis=1) == y
    trained = {}  # one training per (base candidate, fold): its views and EMA sets are free
    for cid in store.candidates():
        for k in store.folds(cid):
            m = store.read_manifest(cid, k)
            trained[(m.get("base_candidate") or cid, k)] = m["epochs_run"]
    s = spec["scores"]
    return {"honest_acc": spec["methods"][spec["method"]]["honest_acc"],
            "estimate": s["submission_estimate_acc"], "low": s["submission_estimate_low"],
            "high": s["submission_estimate_high"], "true_acc": float(ens_right.mean()),
            "method": spec["method"], "used": len(spec["candidates"]),
            "candidates": len(cands), "best_single_true": float(best_right.mean()),
            "gain_pp": 100 * float(ens_right.mean() - best_right.mean()),
            "mcnemar_p": mcnemar(best_right, ens_right),
            "trial_epochs": int(sum(trained.values()))}


def one(variant: str, seed: int, data: Path, smoke: bool) -> dict:
    folder = WORK / ("smoke" if smoke else "runs") / f"{variant}-seed{seed}"
    if folder.exists():
        shutil.rmtree(folder)  # a run cut short: start it again
    folder.mkdir(parents=True)
    overrides = VARIANTS[variant]
    cfg = str(config_file(folder, data, seed, overrides, smoke))
    log, py = folder / "log.txt", sys.executable
    wall = run([py, "-m", "sketchtune.sweep", cfg, "--quiet"], log)
    wall += run([py, "-m", "ensemble_search.optimize", cfg, "--quiet"], log)
    if overrides.get("pseudo.enabled"):
        wall += run([py, "-m", "sketchtune.sweep", cfg, "--quiet",
                     "--set", "pseudo.enabled=true"], log)
        wall += run([py, "-m", "ensemble_search.optimize", cfg, "--quiet"], log)
    wall += run([py, "-m", "ensemble_search.predict", cfg, "--quiet"], log)
    return {"variant": variant, "seed": seed, "wall_s": wall, **score(folder, data)}


def table(rows: list[dict], variants: list[str]) -> str:
    """The mean over seeds (paired against the same seed's baseline), then every run."""
    df = pd.DataFrame(rows).sort_values("seed")
    df["delta_pp"] = 100 * (df["true_acc"] - df["seed"].map(
        df[df["variant"] == "baseline"].set_index("seed")["true_acc"]))

    def ms(x: pd.Series, digits: int = 3) -> str:
        return f"{x.mean():.{digits}f} ± {x.std(ddof=1) if len(x) > 1 else 0:.{digits}f}"
    out = ["| variant | seeds | honest | estimate | true test acc | vs baseline (pp, paired) | "
           "trial-epochs | gain over best single (pp) |", "|" + "---|" * 8]
    runs = ["| variant | seed | honest | estimate [interval] | true | vs baseline (pp) | "
            "trial-epochs | wall s | used of stored | method | best single (true) | gain (pp) | "
            "McNemar p |", "|" + "---|" * 13]
    for v in variants:
        d = df[df["variant"] == v]
        if d.empty:
            continue
        out.append(f"| {v} | {','.join(map(str, d['seed']))} | {ms(d['honest_acc'])} | "
                   f"{ms(d['estimate'])} | {ms(d['true_acc'])} | {d['delta_pp'].mean():+.1f} ("
                   + ", ".join(f"{x:+.1f}" for x in d["delta_pp"]) + f") | "
                   f"{ms(d['trial_epochs'], 0)} | {d['gain_pp'].mean():+.1f} |")
        runs += [f"| {v} | {r.seed} | {r.honest_acc:.3f} | {r.estimate:.3f} [{r.low:.3f}, "
                 f"{r.high:.3f}] | {r.true_acc:.3f} | {r.delta_pp:+.1f} | {r.trial_epochs} | "
                 f"{r.wall_s:.0f} | {r.used} of {r.candidates} | {r.method} | "
                 f"{r.best_single_true:.3f} | {r.gain_pp:+.1f} | {r.mcnemar_p:.1g} |"
                 for r in d.itertuples()]
    return "\n".join(out) + "\n\n" + "\n".join(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")][:1 if args.smoke else None]
    variants = args.variants.split(",")[:2] if args.smoke else args.variants.split(",")
    data = WORK / "data"
    from sketchtune.demo import make_demo

    make_demo(data, progress=False)  # the demo's data: 600 train, 1,000 labelled test images
    results = WORK / ("smoke.jsonl" if args.smoke else "results.jsonl")
    rows = [json.loads(line) for line in results.read_text().splitlines()] \
        if results.exists() else []
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs; load {os.getloadavg()}")
    for seed in seeds:
        for v in variants:
            if any(r["variant"] == v and r["seed"] == seed for r in rows):
                continue
            r = one(v, seed, data, args.smoke)
            rows.append(r)
            with results.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"{v} seed {seed}: true {r['true_acc']:.3f} estimate {r['estimate']:.3f} "
                  f"honest {r['honest_acc']:.3f} epochs {r['trial_epochs']} "
                  f"{r['wall_s']:.0f} s; load {os.getloadavg()[0]:.2f}", flush=True)
    print(table([r for r in rows if r["seed"] in seeds], variants))


if __name__ == "__main__":
    main()
