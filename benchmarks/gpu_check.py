"""The GPU check's steps (a-f), each in a child process with its own time limit; see gpu_check.sh.

    python benchmarks/gpu_check.py --data DIR [--device cuda] [--backbone caformer_b36.sail_in22k]
                                   [--small resnet50.a1_in1k] [--img-size 224] [--out DIR]

Random-init weights (no network). Steps:
  a) trial: one (candidate, fold 0) trial of the project's trainer (`run_trial`), 1 epoch,
     AMP + channels_last on CUDA: img/s, epoch time, peak GPU memory;
  b) bound: the same model, batch and precision in the trainer's own loop on one pre-made
     batch already on the device (no data loading): img/s, and a's ratio to it;
  c) pair: `python -m sketchtune.sweep` with two trials (folds of one candidate, 2 folds),
     `resources.gpu: 0.5` each: do they overlap in time, and their combined img/s;
  d) predict: the test images through `predict` (TTA as configured): seconds;
  e) small: step a with a smaller backbone, so one model family's failure hides nothing;
  f) compile: step e with `train.compile: true` (torch.compile): the epoch, compile included,
     and its img/s beside e's.
Writes OUT/gpu_check.json and OUT/gpu_check.md; exits 1 if any step failed or timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "imagenet_sketch.yaml"
# Seconds per step: on one H100/H200 with the full synthetic data the whole check is meant to
# end within 10 minutes (data, caches and step f's compile included), so no step may hang it.
LIMITS = {"a": 150, "b": 60, "c": 200, "d": 60, "e": 100, "f": 200}


def overrides(args: argparse.Namespace, backbone: str, name: str) -> list[str]:
    cpu = args.device == "cpu"
    cores = os.cpu_count() or 2
    return [
        f"name={name}",
        f"data.train_csv={args.data / 'train.csv'}", f"data.test_csv={args.data / 'test.csv'}",
        # Workers augment while the GPU computes; on a CPU they would only compete with it.
        f"data.num_workers={0 if cpu else min(6, cores - 1)}",
        f"train.model.name={backbone}", "train.model.pretrained=false",
        f"train.img_size={args.img_size}", "train.epochs=1", "train.sched.warmup_epochs=0",
        f"train.batch_size={args.batch_size}",
        f"storage_path={args.out / 'sweeps'}", f"tracking_uri=sqlite:///{args.out / 'mlflow.db'}",
        "save_weights=false", "search.enabled=false",
    ]


# ---------------------------------------------------------------- the steps (child process)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_trial(args: argparse.Namespace, backbone: str,
               extra: tuple[str, ...] = ()) -> dict[str, Any]:
    import torch

    from sketchtune.config import load_config
    from sketchtune.engine import select_device
    from sketchtune.prepare import prepare_data
    from sketchtune.store import PredictionStore
    from sketchtune.train import run_trial

    device = select_device(args.device)
    cfg = load_config(CONFIG, [*overrides(args, backbone, f"gpu_check_{args.step}"), *extra])
    t0 = time.perf_counter()
    data = prepare_data(cfg, cfg.train.img_size)
    prep = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    res = run_trial(cfg, cfg.train, 0, data=data, device=device)
    total = time.perf_counter() - t0
    m = PredictionStore(cfg.sweep_dir).read_manifest(res.candidate_id, 0)
    h = m["history"][0]
    return {"backbone": backbone, "img_per_s": h["images_per_s"],
            "epoch_s": h["epoch_time_s"], "trial_s": total, "data_s": prep,
            "predict_s": m["train_seconds"] - h["epoch_time_s"],
            "train_images": int((data.train["fold"] != 0).sum()),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated(device)
            if device.type == "cuda" else None,
            "val_acc": res.metrics["val_acc"], "compiled": cfg.train.compile}


def _model_and_batch(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    import torch

    from sketchtune.config import load_config
    from sketchtune.engine import select_device
    from sketchtune.model import build_model

    device = select_device(args.device)
    cfg = load_config(CONFIG, overrides(args, args.backbone, "gpu_check_bound"))
    classes = int(__import__("pandas").read_csv(cfg.data.train_csv)["target"].max()) + 1
    model = build_model(cfg.train.model, classes, cfg.train.img_size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return cfg, model, device, classes


def step_bound(args: argparse.Namespace) -> dict[str, Any]:
    import itertools

    import torch

    from sketchtune.engine import FitState, train_one_epoch
    from sketchtune.losses import build_loss
    from sketchtune.optim import build_optimizer

    cfg, model, device, classes = _model_and_batch(args)
    bs, s = cfg.train.batch_size, cfg.train.img_size
    # On the device already: the loop measures the model alone (train_one_epoch's copy to the
    # device is then a no-op), with the trainer's own AMP and channels_last.
    x = torch.randn(bs, 3, s, s, device=device)
    y = torch.randint(0, classes, (bs,), device=device)
    state = FitState(model, build_optimizer(model, cfg.train.optim))
    scaler = None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        state.scaler = scaler = torch.amp.GradScaler("cuda")
    loss = build_loss(cfg.train.loss)
    train_one_epoch(state, itertools.repeat((x, y), args.bound_warmup), loss, device)
    _sync(device)
    t0 = time.perf_counter()
    train_one_epoch(state, itertools.repeat((x, y), args.bound_batches), loss, device)
    _sync(device)
    secs = time.perf_counter() - t0
    return {"img_per_s": bs * args.bound_batches / secs, "batches": args.bound_batches,
            "batch_size": bs, "fp16_scaler": scaler is not None}


def step_predict(args: argparse.Namespace) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from sketchtune.engine import predict
    from sketchtune.images import SketchDataset
    from sketchtune.prepare import prepare_data
    from sketchtune.transforms import build_eval_transform

    cfg, model, device, classes = _model_and_batch(args)
    data = prepare_data(cfg, cfg.train.img_size)
    ds = SketchDataset(data.test_images, None, build_eval_transform(cfg.train.img_size))
    loader = DataLoader(ds, batch_size=cfg.train.batch_size, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda")
    t0 = time.perf_counter()
    probs = predict(model, loader, device, cfg.train.tta_hflip)
    _sync(device)
    secs = time.perf_counter() - t0
    assert probs.shape == (len(ds), classes)
    return {"images": len(ds), "seconds": secs, "img_per_s": len(ds) / secs,
            "tta_hflip": cfg.train.tta_hflip}


def step_pair(args: argparse.Namespace) -> dict[str, Any]:
    """Two trials of one candidate (folds 0 and 1) through the real sweep CLI, gpu 0.5 each."""
    cpu = args.device == "cpu"
    cores = os.cpu_count() or 2
    per = max(1, cores // 2)
    sets = overrides(args, args.backbone, "gpu_check_pair") + [
        "data.n_folds=2", f"resources={{cpu: {per}, gpu: {0 if cpu else 0.5}}}",
        f"data.num_workers={0 if cpu else max(0, min(6, per - 1))}",
        "ray.max_concurrent_trials=2"]
    cmd = [sys.executable, "-m", "sketchtune.sweep", str(CONFIG), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=LIMITS["c"] * args.limit_scale - 10)  # then the step's own
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sweep exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    sweep = args.out / "sweeps" / "gpu_check_pair"
    spans, rates = [], []
    for rj in sorted((sweep / "ray").glob("*/*/result.json")):
        rows = [json.loads(x) for x in rj.read_text().splitlines() if x.strip()]
        if not rows or rows[-1].get("skipped"):
            continue
        start = rows[0]["timestamp"] - rows[0]["time_total_s"]
        spans.append((start, rows[-1]["timestamp"]))
        rates.append(rows[-1]["images_per_s"])
    if len(spans) != 2:
        raise RuntimeError(f"expected 2 trials in {sweep / 'ray'}, found {len(spans)}")
    (a0, a1), (b0, b1) = spans
    overlap = max(0.0, min(a1, b1) - max(a0, b0))
    return {"wall_s": wall, "trial_spans_s": [round(b - a, 1) for a, b in spans],
            "overlap_s": overlap, "overlap_share": overlap / max(a1 - a0, b1 - b0),
            "ran_together": overlap > 0, "combined_img_per_s": sum(rates),
            "img_per_s_each": rates}


# ---------------------------------------------------------------- the driver


def run_step(args: argparse.Namespace, step: str) -> dict[str, Any]:
    """One step in a child process with its time limit; its result, or its error and status."""
    out = args.out / f"step_{step}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--step", step, "--result", str(out), *args.passthrough]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=LIMITS[step] * args.limit_scale,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {LIMITS[step] * args.limit_scale:.0f} s",
                "seconds": time.perf_counter() - t0}
    secs = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"ok": False, "error": f"exit {proc.returncode}: {' | '.join(tail)}",
                "seconds": secs}
    return {"ok": True, "seconds": secs, **json.loads(out.read_text())}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# GPU check: {res['device_name']}", "",
             f"{res['machine']}; torch {res['torch']}; backbone {res['backbone']}, small "
             f"{res['small']}; {res['img_size']} px, batch {res['batch_size']}; data {res['data']}",
             "", "| step | ok | seconds | figures |", "|---|---|---|---|"]
    for k, name in (("a", "trial"), ("b", "bound"), ("c", "pair"), ("d", "predict"),
                    ("e", "small"), ("f", "compile")):
        r = res["steps"][k]
        figs = r.get("error") or ", ".join(f"{x}={_fmt(v)}" for x, v in r.items()
                                           if x not in ("ok", "seconds"))
        ok = "yes" if r["ok"] else "NO"
        lines.append(f"| {k}) {name} | {ok} | {r['seconds']:.0f} | {figs} |")
    if res.get("trainer_over_bound") is not None:
        lines.append("")
        lines.append(f"trainer / model-bound: {res['trainer_over_bound']:.2f}")
    if res.get("compiled_over_plain") is not None:
        lines.append("")
        lines.append(f"compiled / plain img/s (f / e, first epoch, compile included): "
                     f"{res['compiled_over_plain']:.2f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="synthetic data (sketchtune.demo)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--backbone", default="caformer_b36.sail_in22k")
    p.add_argument("--small", default="resnet50.a1_in1k", help="step e's backbone")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bound-batches", type=int, default=50)
    p.add_argument("--bound-warmup", type=int, default=5)
    p.add_argument("--limit-scale", type=float, default=1.0,
                   help="multiply every step's time limit (a slow or loaded machine)")
    p.add_argument("--steps", default="abcdef")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "_work" / "gpu_check")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.data, args.out = args.data.resolve(), args.out.resolve()
    if args.step:  # a child: one step, its figures to --result
        fn = {"a": lambda: step_trial(args, args.backbone), "b": lambda: step_bound(args),
              "c": lambda: step_pair(args), "d": lambda: step_predict(args),
              "e": lambda: step_trial(args, args.small),
              "f": lambda: step_trial(args, args.small, ("train.compile=true",))}[args.step]
        args.result.write_text(json.dumps(fn()))
        return 0
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    args.passthrough = [x for a, v in vars(args).items() if a in (
        "data", "device", "backbone", "small", "img_size", "batch_size", "bound_batches",
        "bound_warmup", "out", "limit_scale") for x in (f"--{a.replace('_', '-')}", str(v))]
    cuda = torch.cuda.is_available() and args.device.startswith("cuda")
    res: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name() if cuda else args.device,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
        "backbone": args.backbone, "small": args.small, "img_size": args.img_size,
        "batch_size": args.batch_size, "data": str(args.data), "steps": {}}
    for step in "abcdef":
        if step in args.steps:
            res["steps"][step] = run_step(args, step)
            r = res["steps"][step]
            print(f"gpu_check: step {step}: {'ok' if r['ok'] else 'FAILED'} in "
                  f"{r['seconds']:.0f} s" + ("" if r["ok"] else f": {r['error']}"), flush=True)
        else:
            res["steps"][step] = {"ok": True, "seconds": 0.0, "skipped": True}
    a, b = res["steps"]["a"], res["steps"]["b"]
    res["trainer_over_bound"] = (a["img_per_s"] / b["img_per_s"]
                                 if a.get("img_per_s") and b.get("img_per_s") else None)
    e, f = res["steps"]["e"], res["steps"]["f"]
    res["compiled_over_plain"] = (f["img_per_s"] / e["img_per_s"]
                                  if e.get("img_per_s") and f.get("img_per_s") else None)
    (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    (args.out / "gpu_check.md").write_text(markdown(res))
    print(markdown(res))
    return 0 if all(r["ok"] for r in res["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
