"""Scale benchmark: cache build, disk, memory per concurrent trial, trainer vs model-bound, predict.

    python benchmarks/scale.py [CONFIG] [--set KEY=VALUE ...] [--decode-images 500]
                               [--batches 10] [--pred-images 320] [--concurrent 2]
                               [--sweep-dir DIR --sweep-seconds S] [--out FILE.json]
    python benchmarks/scale.py --smoke        # tiny data, tiny everything (a test runs it)

On the data the config names (`configs/imagenet_sketch.yaml` by default; on a CPU give a
tiny backbone: --set train.model.name=test_resnet.r160_in1k --set train.model.pretrained=false)
it measures, and writes one JSON file (default benchmarks/_work/scale/results.json) plus a
Markdown summary on stdout:

* cache: `load_images` on the first --decode-images train images into a fresh folder with 1
  and with 2 decode threads (wall and process CPU time: CPU/wall above 1 with 2 threads shows
  that decoding runs outside the GIL), then the config's real train and test caches (built
  or found) and their size on disk;
* trainer vs model-bound: in a child process per trial (so its memory is its own), the
  trainer's own `train_one_epoch` over the cached images with the config's augmentations and
  DataLoader workers, against the same call on one pre-made batch tensor repeated (the same
  model, batch and precision: what the model alone allows); alternating, best of --rounds;
  with the kernel's share of the loop's CPU time and its minor page faults (getrusage);
* prediction: `predict` on the first --pred-images test images (TTA as configured), and the
  time that gives for 10,014 images;
* memory: peak RSS and PSS (/proc/PID/smaps_rollup, children included) of one trial alone and
  of --concurrent trials at once, and the cache's share of each trial's PSS (its pages are
  mapped, so N trials share one copy);
* disk per trial, with --sweep-dir: Ray checkpoints and prediction-store files of a finished
  sweep, and its wall time split by the trials' manifests (--sweep-seconds: the driver's wall).

The machine may be shared: the load average is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "scale"
COMPETITION_TEST = 10_014
TINY = ["train.model.name=test_resnet.r160_in1k", "train.model.pretrained=false"]


# ---------------------------------------------------------------- memory


def pss_bytes(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes from /proc/PID/smaps_rollup; (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    kb = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(Rss|Pss):\s+(\d+) kB", text, re.M)}
    return kb.get("Rss", 0) * 1024, kb.get("Pss", 0) * 1024


def mapped_pss(pid: int, needle: str) -> int:
    """PSS in bytes of the mappings of files whose path contains `needle` (the image caches)."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return 0
    total, inside = 0, False
    for line in text.splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = needle in line
        elif inside and line.startswith("Pss:"):
            total += int(line.split()[1]) * 1024
    return total


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (DataLoader workers), from /proc/*/stat (no psutil here)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def run_workers(specs: list[dict[str, Any]], cache_needle: str, timeout: float) -> dict[str, Any]:
    """Run one trial worker per spec at once; sample their memory every 0.25 s until all end."""
    procs = []
    for i, spec in enumerate(specs):
        path = WORK / f"worker{i}.json"
        path.unlink(missing_ok=True)
        spec = {**spec, "out": str(path)}
        procs.append((subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                       cwd=ROOT), path))
    peak_rss = [0] * len(procs)
    peak_pss = [0] * len(procs)
    peak_cache = [0] * len(procs)
    peak_sum = 0
    t0 = time.monotonic()
    while any(p.poll() is None for p, _ in procs):
        if time.monotonic() - t0 > timeout:
            for p, _ in procs:
                p.kill()
            raise TimeoutError(f"trial workers still running after {timeout:.0f} s")
        total = 0
        for i, (p, _) in enumerate(procs):
            rss = pss = cache = 0
            for pid in _tree(p.pid):
                r, s = pss_bytes(pid)
                rss, pss = rss + r, pss + s
                cache += mapped_pss(pid, cache_needle)
            peak_rss[i], peak_pss[i] = max(peak_rss[i], rss), max(peak_pss[i], pss)
            peak_cache[i] = max(peak_cache[i], cache)
            total += pss
        peak_sum = max(peak_sum, total)
        time.sleep(0.25)
    results = []
    for p, path in procs:
        if p.returncode != 0 or not path.is_file():
            raise RuntimeError(f"trial worker exited {p.returncode}")
        results.append(json.loads(path.read_text()))
    return {"workers": results, "peak_rss": peak_rss, "peak_pss": peak_pss,
            "peak_cache_pss": peak_cache, "peak_pss_sum": peak_sum}


# ---------------------------------------------------------------- the trial worker


def trial_worker(spec: dict[str, Any]) -> None:
    """One trial's data, model and loop, as run_trial builds them; writes its figures as JSON."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from sketchtune.allocator import tune_malloc
    from sketchtune.config import load_config
    from sketchtune.engine import FitState, predict, train_one_epoch
    from sketchtune.images import SketchDataset
    from sketchtune.losses import build_loss
    from sketchtune.model import build_model
    from sketchtune.optim import build_optimizer
    from sketchtune.prepare import prepare_data
    from sketchtune.transforms import build_eval_transform, build_train_transform

    tune_malloc()  # as run_trial does before its first batch (SKETCHTUNE_MALLOC=default: off)
    cfg = load_config(spec["config"], spec["set"])
    tc, device = cfg.train, torch.device("cpu")
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    data = prepare_data(cfg, tc.img_size)  # the parent built the caches: a hit
    targets = data.train["target"].to_numpy(np.int64)
    idx = np.flatnonzero((data.train["fold"] != 0).to_numpy())

    class Rows:  # rows of the memory-mapped cache, not copied (as train._Subset)
        def __len__(self) -> int:
            return len(idx)

        def __getitem__(self, i: int) -> Any:
            return data.train_images[idx[i]]

    ds = SketchDataset(Rows(), targets[idx], build_train_transform(tc.aug, tc.img_size))
    bs = tc.batch_size
    loader = DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True,
                        num_workers=cfg.data.num_workers,
                        generator=torch.Generator().manual_seed(0))
    model = build_model(tc.model, data.num_classes, tc.img_size)
    state = FitState(model, build_optimizer(model, tc.optim))
    loss_fn = build_loss(tc.loss)
    x = torch.randn(bs, 3, tc.img_size, tc.img_size)
    y = torch.randint(0, data.num_classes, (bs,))

    def timed(batches: Any) -> dict[str, float]:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        m = train_one_epoch(state, batches, loss_fn, device)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        user, sys_ = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
        return {"img_per_s": m["images_per_s"], "wall_s": wall, "user_s": user, "sys_s": sys_,
                "sys_share": sys_ / max(user + sys_, 1e-9),
                "minor_faults": r1.ru_minflt - r0.ru_minflt}

    n, warm, rounds = spec["batches"], spec["warmup"], spec["rounds"]
    need = warm + n * rounds
    if len(loader) < need:
        raise SystemExit(f"scale: {len(loader)} train batches, need {need}: fewer --batches")
    it = iter(loader)
    train_one_epoch(state, itertools.islice(it, warm), loss_fn, device)  # warm-up
    train_one_epoch(state, itertools.repeat((x, y), warm), loss_fn, device)
    trainer, bound = [], []
    for _ in range(rounds):  # alternate, so a change in the machine's load hits both sides
        trainer.append(timed(itertools.islice(it, n)))
        bound.append(timed(itertools.repeat((x, y), n)))
    out: dict[str, Any] = {"trainer": trainer, "bound": bound, "pid": os.getpid(),
                           "params": sum(p.numel() for p in model.parameters()),
                           "threads": torch.get_num_threads()}
    if spec["pred_images"]:
        m = min(spec["pred_images"], len(data.test_images))
        test = SketchDataset(data.test_images[:m], None, build_eval_transform(tc.img_size))
        t0 = time.perf_counter()
        probs = predict(model, DataLoader(test, batch_size=bs, num_workers=cfg.data.num_workers),
                        device, tc.tta_hflip)
        secs = time.perf_counter() - t0
        assert probs.shape == (m, data.num_classes)
        out["predict"] = {"images": m, "seconds": secs, "tta_hflip": tc.tta_hflip,
                          "seconds_for_10014": secs / m * COMPETITION_TEST}
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(spec["out"]).write_text(json.dumps(out))


# ---------------------------------------------------------------- cache


def measure_cache(cfg: Any, decode_images: int) -> dict[str, Any]:
    from sketchtune.cache import find_caches, load_images, match_config
    from sketchtune.prepare import prepare_data
    from sketchtune.tables import read_train_csv

    d, size = cfg.data, cfg.train.img_size
    train = read_train_csv(d.train_csv, d.image_root, check_images=False)
    paths = [(Path(d.image_root) / p).resolve() for p in train["image_path"][:decode_images]]
    for p in paths:
        p.read_bytes()  # into the OS cache, so neither run pays the disk
    runs = {}
    for threads in (1, 2):
        folder = WORK / f"decode{threads}"
        shutil.rmtree(folder, ignore_errors=True)
        t0, c0 = time.perf_counter(), time.process_time()
        load_images(paths, size, folder, progress=False, workers=threads)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs[threads] = {"images": len(paths), "wall_s": wall, "cpu_s": cpu,
                         "img_per_s": len(paths) / wall, "cpu_per_wall": cpu / wall}
        shutil.rmtree(folder, ignore_errors=True)
    before = {c.path for c in find_caches(d.cache_dir)}
    t0 = time.perf_counter()
    prepare_data(cfg, size)  # the real caches, built now or found
    build = time.perf_counter() - t0
    caches = find_caches(d.cache_dir)
    match_config(cfg, caches)
    mine = [c for c in caches if c.img_size == size and c.dataset.startswith(("train (",
                                                                               "test ("))]
    return {
        "decode": runs,
        "scaling_1_to_2": runs[2]["img_per_s"] / runs[1]["img_per_s"],
        "load_images_default_threads": min(8, os.cpu_count() or 1),
        "full": {"built_now": any(c.path not in before for c in mine), "seconds": build,
                 "files": {c.dataset.split(" ")[0]: {"images": c.n_images, "bytes": c.bytes,
                                                     "path": str(c.path)} for c in mine}},
    }


# ---------------------------------------------------------------- a finished sweep


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def measure_sweep(sweep_dir: Path, wall: float | None) -> dict[str, Any]:
    """Disk per trial and the wall time split of a finished sweep, from its own files."""
    cand = sweep_dir / "candidates"
    manifests = [json.loads(p.read_text()) for p in sorted(cand.glob("*/fold*.json"))]
    store_files = [f for f in cand.glob("*/fold*.*") if f.is_file()]
    trials = sorted(p for p in (sweep_dir / "ray").glob("*/*") if p.is_dir()
                    and (p / "result.json").is_file())
    ckpt = [sum(_du(c) for c in t.glob("checkpoint_*")) for t in trials]
    ray_total = []
    for t in trials:
        lines = (t / "result.json").read_text().splitlines()
        if lines:
            ray_total.append(json.loads(lines[-1]).get("time_total_s", 0.0))
    epochs = sum(sum(h["epoch_time_s"] for h in m["history"]) for m in manifests)
    trained = sum(m["train_seconds"] for m in manifests)
    out = {
        "folds_in_store": len(manifests),
        "store_bytes": sum(f.stat().st_size for f in store_files),
        "store_bytes_per_fold": sum(f.stat().st_size for f in store_files) / max(len(manifests),
                                                                                   1),
        "ray_trials": len(trials),
        "ray_bytes": _du(sweep_dir / "ray"),
        "checkpoint_bytes_per_trial_left": sum(ckpt) / max(len(trials), 1),
        "train_epochs_s": epochs,  # fit: training + the per-epoch validation
        "predict_s": trained - epochs,  # after fit: OOF and test predictions
        "ray_trials_s": sum(ray_total),  # each trial from its start to its last report
    }
    if wall is not None:
        out["wall_s"] = wall
    return out


# ---------------------------------------------------------------- reference backbones (estimates)

# Bytes per parameter a training trial keeps on the GPU: float32 weights, gradients and AdamW's
# two moments (16), plus the best epoch's weights, which fit() copies to the CPU (0 on GPU).
STATE_BYTES_PER_PARAM = 16
H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's H100 SXM datasheet (H200: the same compute)


def reference_estimates(cfg: Any, classes: int = 500, batch: int = 32) -> list[dict[str, Any]]:
    """Per backbone of the config's search space, from the model on the meta device (no memory,
    no download): parameters, forward FLOPs per image (torch's FlopCounterMode), and the bytes
    autograd saves for backward per image in float32 (saved_tensors_hooks). Estimates: AMP
    saves many of them in bf16 (about half), the allocator adds fragmentation and workspaces.
    """
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sketchtune.dryrun import _search_backbones

    size = cfg.train.img_size
    out = []
    for name in _search_backbones(cfg):
        with torch.device("meta"):
            try:
                model = timm.create_model(name, pretrained=False, num_classes=classes,
                                          img_size=size)
            except TypeError:
                model = timm.create_model(name, pretrained=False, num_classes=classes)
            x = torch.empty(1, 3, size, size)
        params = sum(p.numel() for p in model.parameters())
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor, seen: dict[int, int] = seen) -> torch.Tensor:
            seen.setdefault(id(t), t.numel() * t.element_size())
            return t

        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            saved_model = model(x)
        del saved_model
        with FlopCounterMode(display=False) as fc:
            model(x)
        act = sum(seen.values())
        state = STATE_BYTES_PER_PARAM * params
        # bf16 AMP: about half the float32 activations; +1.5 GB for the CUDA context and cuDNN.
        per_trial = state + batch * act * 0.5 + 1.5e9
        out.append({"backbone": name, "params": params, "fwd_gflops": fc.get_total_flops() / 1e9,
                    "act_bytes_fp32_per_img": act, "state_bytes": state,
                    "gpu_bytes_per_trial_est": per_trial,
                    "trials_per_80gb_est": int(80e9 // per_trial)})
    return out


# ---------------------------------------------------------------- report


def _gb(b: float) -> str:
    return f"{b / 1e9:.2f} GB"


def summary(res: dict[str, Any]) -> str:
    c, one = res["cache"], res["one"]
    tr = max(one["workers"][0]["trainer"], key=lambda r: r["img_per_s"])
    bd = max(one["workers"][0]["bound"], key=lambda r: r["img_per_s"])
    ratio = tr["img_per_s"] / bd["img_per_s"]
    lines = [f"load average at start {res['load_start']}, at end {res['load_end']}",
             "",
             "| measure | result | goal |",
             "|---|---|---|"]
    d1, d2 = c["decode"][1], c["decode"][2]
    lines.append(f"| cache build, 1 thread | {d1['img_per_s']:.0f} img/s (CPU/wall "
                 f"{d1['cpu_per_wall']:.2f}) | |")
    lines.append(f"| cache build, 2 threads | {d2['img_per_s']:.0f} img/s (CPU/wall "
                 f"{d2['cpu_per_wall']:.2f}); x{c['scaling_1_to_2']:.2f} = "
                 f"{c['scaling_1_to_2'] / 2:.2f} of linear | >= 0.7 of linear |")
    for k, f in c["full"]["files"].items():
        lines.append(f"| cache on disk, {k} | {_gb(f['bytes'])} for {f['images']:,} images | |")
    lines.append(f"| trainer | {tr['img_per_s']:.1f} img/s, sys {tr['sys_share']:.1%} of CPU, "
                 f"{tr['minor_faults']:,} minor faults | |")
    lines.append(f"| model-bound (same call, pre-made tensors) | {bd['img_per_s']:.1f} img/s, "
                 f"sys {bd['sys_share']:.1%} | |")
    lines.append(f"| trainer / model-bound | {ratio:.2f} | >= 0.9 |")
    lines.append(f"| kernel (sys) share, trainer loop | {tr['sys_share']:.1%} | <= 5 % |")
    p = one["workers"][0].get("predict")
    if p:
        lines.append(f"| prediction | {p['images'] / p['seconds']:.1f} img/s (TTA "
                     f"{p['tta_hflip']}): {p['seconds_for_10014']:.0f} s for 10,014 | |")
    lines.append(f"| 1 trial: peak RSS / PSS | {_gb(one['peak_rss'][0])} / "
                 f"{_gb(one['peak_pss'][0])} (cache share {_gb(one['peak_cache_pss'][0])}) | |")
    many = res.get("many")
    if many:
        k = len(many["peak_pss"])
        extra = (many["peak_pss_sum"] - one["peak_pss"][0]) / (k - 1)
        model = 4 * 4 * one["workers"][0]["params"]  # weights, grads, AdamW's two moments
        lines.append(f"| {k} trials: peak PSS sum / each | {_gb(many['peak_pss_sum'])} / "
                     + ", ".join(_gb(x) for x in many["peak_pss"]) + " | |")
        lines.append(f"| PSS per extra trial | {_gb(extra)} ({_gb(extra - model)} beyond the "
                     f"model's {_gb(model)} training state) | <= 0.5 GB beyond the model |")
    s = res.get("sweep")
    if s:
        per_trial = s["ray_bytes"] / max(s["ray_trials"], 1)
        lines.append(f"| sweep: store per fold / Ray per trial | "
                     f"{s['store_bytes_per_fold'] / 1e6:.2f} MB / {per_trial / 1e6:.2f} MB | |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def _smoke_config() -> tuple[str, list[str]]:
    from sketchtune.demo import make_demo

    data = WORK / "smoke" / "data"
    make_demo(data, classes=3, per_class=12, test_per_class=2, size=48, seed=0, progress=False)
    return str(ROOT / "configs" / "imagenet_sketch.yaml"), [
        *TINY, f"data.train_csv={data / 'train.csv'}", f"data.test_csv={data / 'test.csv'}",
        f"data.cache_dir={WORK / 'smoke' / 'cache'}", f"data.folds_csv={WORK / 'smoke' / 'f.csv'}",
        "data.num_workers=0", "train.img_size=32", "train.batch_size=4", "data.n_folds=3"]


def main(argv: list[str] | None = None) -> int:
    global WORK
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default=str(ROOT / "configs" / "imagenet_sketch.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--decode-images", type=int, default=500)
    p.add_argument("--batches", type=int, default=10, help="timed batches per round and side")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pred-images", type=int, default=320)
    p.add_argument("--concurrent", type=int, default=2, help="trials at once (0: skip)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per trial worker (0: torch's default)")
    p.add_argument("--sweep-dir", type=Path, help="a finished sweep folder to measure")
    p.add_argument("--sweep-seconds", type=float, help="that sweep's wall time")
    p.add_argument("--out", type=Path, default=WORK / "results.json",
                   help="the JSON of every figure; scratch files go in its folder")
    p.add_argument("--smoke", action="store_true", help="tiny data and loops: seconds")
    p.add_argument("--reference", action="store_true",
                   help="only the estimates for the config's search-space backbones (meta "
                        "device: parameters, FLOPs, activation bytes; seconds, no data)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        trial_worker(json.loads(args.worker))
        return 0
    from sketchtune.config import load_config

    WORK = args.out.resolve().parent  # scratch files (decode runs, worker results) beside it
    WORK.mkdir(parents=True, exist_ok=True)
    config, sets = args.config, list(args.set)
    if args.smoke:
        config, sets = _smoke_config()
        args.decode_images, args.batches, args.warmup, args.rounds = 12, 2, 1, 1
        args.pred_images = 4
    cfg = load_config(config, sets)
    if args.reference:
        ref = reference_estimates(cfg)
        args.out.write_text(json.dumps({"reference": ref}, indent=1))
        print("| backbone | params (M) | fwd GFLOPs/img | saved act. MB/img (fp32) | "
              "GPU GB per trial (est.) | trials per 80 GB (est.) |")
        print("|---|---|---|---|---|---|")
        for r in ref:
            print(f"| {r['backbone']} | {r['params'] / 1e6:.1f} | {r['fwd_gflops']:.1f} | "
                  f"{r['act_bytes_fp32_per_img'] / 1e6:.0f} | "
                  f"{r['gpu_bytes_per_trial_est'] / 1e9:.1f} | {r['trials_per_80gb_est']} |")
        return 0
    res: dict[str, Any] = {"config": config, "set": sets, "machine": platform.platform(),
                           "cpus": os.cpu_count(), "load_start": os.getloadavg(),
                           "malloc_env": {k: v for k, v in os.environ.items()
                                          if k.startswith(("MALLOC_", "LD_PRELOAD"))},
                           "args": {k: str(v) for k, v in vars(args).items()}}
    t0 = time.perf_counter()
    res["cache"] = measure_cache(cfg, args.decode_images)
    spec = {"config": config, "set": sets, "batches": args.batches, "warmup": args.warmup,
            "rounds": args.rounds, "pred_images": args.pred_images, "threads": args.threads}
    needle = str(Path(cfg.data.cache_dir).resolve())
    res["one"] = run_workers([spec], needle, timeout=3600)
    if args.concurrent > 1:
        quick = {**spec, "pred_images": 0, "rounds": 1}
        res["many"] = run_workers([quick] * args.concurrent, needle, timeout=3600)
    if args.sweep_dir:
        res["sweep"] = measure_sweep(args.sweep_dir, args.sweep_seconds)
    res["seconds"] = time.perf_counter() - t0
    res["load_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(summary(res))
    print(f"\n(all figures: {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
