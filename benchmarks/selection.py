"""cv selection rules at equal training budget: `search.select: top_k` vs `ensemble` on the demo.

    python benchmarks/selection.py [--smoke] [--seeds 42,43,44] [--set KEY=VALUE ...]

For each seed (`train.seed`, which also seeds Optuna), the shipped demo sweep
(configs/sweep.yaml, demo data from `make_demo`) runs into its own folder under
benchmarks/_work/selection/ (git-ignored), twice in the same sweep folder:

1. `search.select: top_k`: the search stage, then cv on its choice;
2. `search.select: ensemble`: the search stage is restored from step 1 (the same trials,
   nothing trained again), only the cv choice differs, and cv trains only the (candidate,
   fold) pairs the store does not hold yet.

Both rules send the same number of candidates to cv (the `ensemble` budget defaults to what
top_k picks), so both cost the same cv trials. Then, per rule, `ensemble_search.optimize
--candidates <the rule's choice>` and `ensemble_search.predict` run as a user would, and the
submission is scored against the demo's test_labels.csv (1,000 test images, not the
demo's 200: +-1.5 pp of sampling noise rather than +-3). Reported per seed and as the mean:
the chosen method's honest (nested-fold) estimate, the submission's test accuracy, and the
same two for the plain mean of the chosen candidates (a rule's effect without the method
choice on top). `--smoke` shrinks everything to a minute of training.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sketchtune.config import apply_overrides  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "selection"
SHIPPED = ROOT / "configs" / "sweep.yaml"
RULES = ("top_k", "ensemble")


def sweep_config_file(seed: int, rule: str, data: Path, smoke: bool,
                      overrides: dict[str, Any]) -> Path:
    """The shipped demo config for one seed and rule, written under the seed's folder."""
    folder = WORK / f"seed{seed}"
    raw = yaml.safe_load(SHIPPED.read_text())
    raw.update(name="selection", storage_path=str(folder / "sweeps"),
               # One MLflow store per rule: the sweep's parent run records search.select.
               tracking_uri=f"sqlite:///{folder / f'mlflow-{rule}.db'}")
    raw["data"].update(train_csv=str(data / "train.csv"), test_csv=str(data / "test.csv"))
    raw["train"]["seed"] = seed
    raw["search"]["select"] = rule
    if smoke:
        raw["data"]["n_folds"] = 2
        raw["train"].update(epochs=2, img_size=32)
        raw["train"]["sched"]["warmup_epochs"] = 0
        raw["search"].update(num_samples=4, grace_period=1, top_k_per_backbone=1)
    raw = apply_overrides(raw, overrides)
    path = folder / f"sweep-{rule}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def accuracy(submission: Path, labels: Path) -> float:
    import pandas as pd

    sub = pd.read_csv(submission)
    truth = pd.read_csv(labels).set_index("image_path")["target"]
    return float((sub["target"].to_numpy() == truth.loc[sub["image_path"]].to_numpy()).mean())


def ensemble_for(cfg_path: Path, ids: list[str], labels: Path, out: Path) -> dict[str, Any]:
    """optimize (restricted to `ids`) and predict, as a user runs them; the scores."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cli in (["ensemble_search.optimize", "--candidates", ",".join(ids)],
                ["ensemble_search.predict"]):
        subprocess.run([sys.executable, "-m", *cli, str(cfg_path), "--quiet"], check=True,
                       env=env, cwd=ROOT)
    ens_dir = cfg_path.parent / "sweeps" / "selection" / "ensemble"
    summary = json.loads((ens_dir / "ensemble.json").read_text())
    row = {"method": summary["method"],
           "honest_acc": summary["methods"][summary["method"]]["honest_acc"],
           "mean_honest_acc": summary["methods"]["mean"]["honest_acc"],
           "submission_acc": accuracy(ens_dir / "submission.csv", labels)}
    # The plain mean's submission: predict with ensemble.json's `mean` weights.
    mean = dict(summary, method="mean", candidates=[
        {"candidate_id": c, "name": c, "weight": w}
        for c, w in summary["methods"]["mean"]["weights"].items() if w > 0])
    mean_json = ens_dir / "ensemble-mean.json"
    mean_json.write_text(json.dumps(mean))
    subprocess.run([sys.executable, "-m", "ensemble_search.predict", str(cfg_path), "--quiet",
                    "--ensemble", str(mean_json)], check=True, env=env, cwd=ROOT)
    row["mean_submission_acc"] = accuracy(ens_dir / "submission.csv", labels)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(ens_dir, out)
    return row


def run_seed(seed: int, data: Path, smoke: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    from sketchtune.config import load_config
    from sketchtune.sweep import run_sweep

    shutil.rmtree(WORK / f"seed{seed}", ignore_errors=True)
    out: dict[str, Any] = {"seed": seed}
    for rule in RULES:
        path = sweep_config_file(seed, rule, data, smoke, overrides)
        t = time.perf_counter()
        summaries = run_sweep(load_config(path), str(path), quiet=True)
        out[rule] = {"candidates": [s.candidate.id for s in summaries],
                     "params": [s.candidate.params for s in summaries],
                     "sweep_s": time.perf_counter() - t}
        print(f"  seed {seed} {rule}: cv on {out[rule]['candidates']} in "
              f"{out[rule]['sweep_s']:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    for rule in RULES:
        path = WORK / f"seed{seed}" / f"sweep-{rule}.yaml"
        out[rule].update(ensemble_for(path, out[rule]["candidates"], data / "test_labels.csv",
                                      WORK / f"seed{seed}" / f"ensemble-{rule}"))
    return out


def report(rows: list[dict[str, Any]]) -> None:
    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    print("\n| seed | rule | cv candidates (shared) | method | honest acc | submission acc "
          "| mean: honest | mean: submission |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        shared = len(set(r["top_k"]["candidates"]) & set(r["ensemble"]["candidates"]))
        for rule in RULES:
            x = r[rule]
            print(f"| {r['seed']} | {rule} | {len(x['candidates'])} ({shared}) | {x['method']} "
                  f"| {x['honest_acc']:.4f} | {x['submission_acc']:.4f} "
                  f"| {x['mean_honest_acc']:.4f} | {x['mean_submission_acc']:.4f} |")
    for rule in RULES:
        xs = [r[rule] for r in rows]
        print(f"| **mean** | {rule} | | | **{mean([x['honest_acc'] for x in xs]):.4f}** "
              f"| **{mean([x['submission_acc'] for x in xs]):.4f}** "
              f"| {mean([x['mean_honest_acc'] for x in xs]):.4f} "
              f"| {mean([x['mean_submission_acc'] for x in xs]):.4f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="tiny data, 2 folds, 2 epochs, 4 samples, one seed unless --seeds")
    ap.add_argument("--seeds", default=None, help="comma-separated train.seed values "
                    "(default 42,43,44; 42 with --smoke)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a dotted key of the shipped config (YAML value), for both "
                         "rules, e.g. --set search.num_samples=10")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --set wants KEY=VALUE but got {item!r}", file=sys.stderr)
            return 2
        overrides[key] = yaml.safe_load(value)
    seeds = [int(s) for s in (args.seeds or ("42" if args.smoke else "42,43,44")).split(",")]
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import optuna
    import torch

    from sketchtune.demo import make_demo

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}; commit {commit}; {os.cpu_count()} CPUs, "
          f"{platform.machine()}, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.1f}; seeds {seeds}; overrides {overrides or 'none'}",
          flush=True)
    data = WORK / ("demo-smoke" if args.smoke else "demo")
    make_demo(data, seed=0, **(dict(classes=4, per_class=10, test_per_class=5, size=32)
                               if args.smoke else {"test_per_class": 100}))
    out = WORK / ("results-smoke.json" if args.smoke else "results.json")
    rows = []
    for seed in seeds:
        rows.append(run_seed(seed, data, args.smoke, overrides))
        out.write_text(json.dumps(rows, indent=1, default=str))  # each seed as it ends
    report(rows)
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
