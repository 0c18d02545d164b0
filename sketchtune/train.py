"""One (candidate, fold) trial end to end; `python -m sketchtune.train CONFIG --fold K`."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm.utils
import torch
from torch.utils.data import DataLoader

from .allocator import tune_malloc
from .checks import check_trial
from .cli import add_debug_argument, base_parser, load_sweep_config, run_cli, setup_logging
from .config import SweepConfig, TrainConfig, candidate_id
from .engine import FitState, fit, load_best, predict, select_device
from .errors import ConfigError
from .faults import maybe_fail
from .images import SketchDataset
from .losses import build_loss, build_mixup
from .model import build_model
from .optim import build_ema, build_optimizer, build_scheduler, updates_per_epoch
from .prepare import PreparedData, Tables, prepare_data
from .store import PredictionStore
from .transforms import build_eval_transform, build_train_transform

__all__ = ["TrialResult", "main", "run_trial"]

_log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrialResult:
    candidate_id: str
    fold: int
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]  # val_acc, val_loss of the best epoch
    manifest_path: Path


def _loader(images, targets, transform, batch_size, *, train: bool, workers: int, seed: int,
            device: torch.device) -> DataLoader:
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)  # albumentations draws from its own generator
    ds = SketchDataset(images, targets, transform)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        # A last batch of one sample breaks BatchNorm; drop it when training.
        drop_last=train and len(ds) > batch_size,
        num_workers=workers,
        # Not persistent: workers are forked anew each epoch and reseeded from the loader's
        # generator, which is reseeded per epoch, so a resumed epoch repeats exactly.
        persistent_workers=False,
        pin_memory=device.type == "cuda",
        generator=g,
        worker_init_fn=_seed_worker,
    )


def _seed_worker(worker_id: int) -> None:
    # Every worker starts with a copy of the same augmentation generator; reseed each from
    # torch's per-worker seed (drawn from the loader's seeded generator each epoch), so workers
    # differ from each other and a run repeats exactly.
    info = torch.utils.data.get_worker_info()
    tf = getattr(info.dataset, "transform", None)
    if hasattr(tf, "set_random_seed"):
        tf.set_random_seed(info.seed % 2**32)


def run_trial(
    cfg: SweepConfig,
    train_cfg: TrainConfig,
    fold: int,
    *,
    report: Callable[[dict[str, float], FitState], None] | None = None,
    resume: dict[str, Any] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    data: PreparedData | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    log_every_s: float | None = None,
    tables: Tables | None = None,
) -> TrialResult:
    """Train `train_cfg` on every fold but `fold`, keep the best epoch, write its predictions.

    `report(metrics, state)` gets each epoch's metrics and the training state after that
    epoch, so a caller (Ray) can checkpoint the state beside the metrics; it may raise to stop
    training. `resume` is a `FitState.state_dict()` to continue from. `data` is the
    prepared data, prepared here when not given (from `tables` when given: a sweep's trials
    get the tables pre-flight read). `progress` shows bars inside each epoch; `log_every_s`
    logs batches, img/s and ETA every so many seconds instead (a Ray trial).
    """
    if not 0 <= fold < cfg.data.n_folds:
        raise ConfigError(f"--fold {fold}: must be in [0, {cfg.data.n_folds})")
    cid = candidate_id(train_cfg)
    device = device or select_device()
    tune_malloc()  # before the first batch: big buffers stay in the heap (allocator.py)
    timm.utils.random_seed(train_cfg.seed)
    if data is None:
        # Seconds before any bar at 15k + 10k images: each image's size and mtime are read to
        # find its cache (and, without `tables`, the CSVs read and every image path checked).
        _log.info("reading the %d px image caches under %s", train_cfg.img_size,
                  cfg.data.cache_dir)
        data = prepare_data(cfg, train_cfg.img_size, progress, tables)
    is_val = (data.train["fold"] == fold).to_numpy()
    tr_idx, va_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    targets = data.train["target"].to_numpy(np.int64)
    workers = cfg.data.num_workers
    train_tf = build_train_transform(train_cfg.aug, train_cfg.img_size)
    eval_tf = build_eval_transform(train_cfg.img_size)
    kw = dict(workers=workers, seed=train_cfg.seed, device=device)
    train_loader = _loader(_Subset(data.train_images, tr_idx), targets[tr_idx], train_tf,
                           train_cfg.batch_size, train=True, **kw)
    val_loader = _loader(_Subset(data.train_images, va_idx), targets[va_idx], eval_tf,
                         train_cfg.batch_size, train=False, **kw)

    model = build_model(train_cfg.model, data.num_classes, train_cfg.img_size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, train_cfg.optim)
    scheduler = build_scheduler(optimizer, train_cfg.sched, train_cfg.epochs,
                                updates_per_epoch(len(train_loader), train_cfg.accum_steps))
    scaler = None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        scaler = torch.amp.GradScaler("cuda")  # fp16 needs loss scaling; bf16 does not
    ema = build_ema(train_cfg.ema, model)  # before compile, as timm's train.py
    if train_cfg.compile:
        model.compile()  # in place: the state_dict keeps its keys, checkpoints stay portable
    state = FitState(model, optimizer, scheduler, scaler, ema=ema)
    if resume is not None:
        state.load_state_dict(resume)
        _log.info("resumed %s fold %d at epoch %d", cid, fold, state.epoch)

    def _report(metrics: dict[str, float]) -> None:
        maybe_fail(int(metrics["epoch"]))  # a no-op unless a reliability test asks for a fault
        if report is not None:
            report(metrics, state)
        else:
            _log.info("epoch %d: %s", metrics["epoch"],
                      " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"))

    def reseed(epoch: int) -> None:
        # Epoch e's shuffling, augmentation and dropout depend on (seed, e) only, so a trial
        # resumed from a checkpoint trains exactly as an uninterrupted one (on CPU).
        s = train_cfg.seed * 10_007 + epoch
        torch.manual_seed(s)
        np.random.seed(s % 2**32)  # timm's Mixup draws from numpy's global generator
        train_loader.generator.manual_seed(s)
        train_tf.set_random_seed(s)

    t0 = time.perf_counter()
    fit(state, train_loader, val_loader, targets[va_idx], build_loss(train_cfg.loss),
        epochs=train_cfg.epochs, patience=train_cfg.patience, device=device, report=_report,
        tta_hflip=train_cfg.tta_hflip, mixup=build_mixup(train_cfg.mixup, data.num_classes),
        accum_steps=train_cfg.accum_steps, progress=progress, log_every_s=log_every_s,
        on_epoch_start=reseed)
    model = load_best(state)

    # OOF and test predictions both come from the best epoch's weights. The OOF ones are the
    # probabilities that epoch's evaluation scored (same weights, loader and tta_hflip), kept
    # by fit; only a checkpoint from before they were kept needs the val rows predicted again.
    val_probs = state.best_val_probs
    if val_probs is None:
        val_probs = predict(model, val_loader, device, train_cfg.tta_hflip)
    test_loader = _loader(data.test_images, None, eval_tf, train_cfg.batch_size, train=False, **kw)
    test_probs = predict(model, test_loader, device, train_cfg.tta_hflip, progress, "test",
                         log_every_s)

    store = PredictionStore(cfg.sweep_dir)
    weights_name, files = None, {}
    if cfg.save_weights:
        from safetensors.torch import save as st_save

        weights_name = f"fold{fold}.safetensors"
        sd = {k: v.contiguous() for k, v in (state.best_weights or model.state_dict()).items()}
        files[weights_name] = st_save(sd)  # written by the store, before its manifest
    manifest = {
        "config": train_cfg.model_dump(mode="json"),
        "backbone": train_cfg.model.name,
        "n_folds": cfg.data.n_folds,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "metrics": state.best_metrics,
        "history": state.history,
        "train_seconds": time.perf_counter() - t0,
        "weights_file": weights_name,
        "test_csv": str(cfg.data.test_csv),
        "folds_csv": str(cfg.data.folds_csv),
        "mlflow_run_id": None,
        **(extra_manifest or {}),
    }
    path = store.write_fold(
        cid, fold, val_keys=data.train["image_path"].to_numpy()[va_idx],
        val_targets=targets[va_idx], val_probs=val_probs,
        test_keys=data.test["image_path"].to_numpy(), test_probs=test_probs, manifest=manifest,
        files=files,
    )
    return TrialResult(cid, fold, state.best_epoch, state.epoch, dict(state.best_metrics), path)


class _Subset:
    """Rows `idx` of a (memory-mapped) image array, without copying them into memory."""

    def __init__(self, images: np.ndarray, idx: np.ndarray) -> None:
        self.images, self.idx = images, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[self.idx[i]]


def main(argv: list[str] | None = None) -> int:
    prog = "sketchtune.train"
    p = base_parser(prog, "Train one (candidate, fold) trial of the config's `train` section "
                          "and write its predictions to the store (no Ray).")
    p.add_argument("--fold", type=int, default=0, help="validation fold")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    add_debug_argument(p)
    args = p.parse_args(argv)
    setup_logging(args.quiet, prog)
    return run_cli(prog, _main, args)


def _main(args: argparse.Namespace) -> int:
    from .checks import check_environment  # preflight imports this module

    cfg = load_sweep_config(args)
    check_trial(cfg, args.fold, str(args.config))
    device = select_device(args.device)
    # The same machine checks as the sweep's, before the data step writes folds and caches.
    check_environment(cfg, [cfg.train], str(args.config), device=args.device)
    res = run_trial(cfg, cfg.train, args.fold, device=device, progress=not args.quiet)
    print(f"candidate {res.candidate_id} fold {res.fold}: best epoch {res.best_epoch}, "
          f"val_acc {res.metrics['val_acc']:.4f}, val_loss {res.metrics['val_loss']:.4f} -> "
          f"{res.manifest_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
