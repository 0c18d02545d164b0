"""One (candidate, fold) trial end to end; `python -m sketchtune.train CONFIG --fold K`."""

from __future__ import annotations

import argparse
import copy
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
from .checks import check_environment, check_trial
from .cli import add_debug_argument, base_parser, load_sweep_config, run_cli, setup_logging
from .config import (
    PredictionSet,
    SweepConfig,
    TrainConfig,
    candidate_id,
    own_view,
    prediction_sets,
    view_img_size,
)
from .engine import FitState, evaluate, fit, predict, select_device
from .errors import ConfigError
from .faults import maybe_fail
from .images import SketchDataset
from .losses import build_loss, build_mixup
from .model import build_model
from .optim import build_ema, build_optimizer, build_scheduler, updates_per_epoch
from .prepare import PreparedData, Tables, prepare_data, resized
from .pseudo import FoldWeights, fold_inputs
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
    pseudo: FoldWeights | None = None,
) -> TrialResult:
    """Train `train_cfg` on every fold but `fold`, keep the best epoch, write its predictions.

    `report(metrics, state)` gets each epoch's metrics and the training state after that
    epoch, so a caller (Ray) can checkpoint the state beside the metrics; it may raise to stop
    training. `resume` is a `FitState.state_dict()` to continue from. `data` is the
    prepared data, prepared here when not given (from `tables` when given: a sweep's trials
    get the tables pre-flight read). `progress` shows bars inside each epoch; `log_every_s`
    logs batches, img/s and ETA every so many seconds instead (a Ray trial). `pseudo`: the
    per-fold weights that label test images for `train_cfg.pseudo` (stage pseudo).
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
    images, labels, n_pseudo = _Subset(data.train_images, tr_idx), targets[tr_idx], 0
    if train_cfg.pseudo is not None:
        if pseudo is None or pseudo.digest != train_cfg.pseudo.source:
            raise ConfigError("train.pseudo: set by the sweep's stage pseudo, which hands the "
                              "trial the ensemble.json it was planned with; run the sweep")
        rows, extra = fold_inputs(PredictionStore(cfg.sweep_dir), pseudo, fold,
                                  data.test["image_path"].to_numpy(str), train_cfg.pseudo,
                                  len(tr_idx), train_cfg.seed)
        images, n_pseudo = _Concat(images, _Subset(data.test_images, rows)), len(rows)
        if extra.ndim == 2:  # soft: the labelled rows as one-hot rows beside them
            labels = np.eye(data.num_classes, dtype=np.float32)[labels]
        labels = np.concatenate([labels, extra])
        _log.info("%d pseudo-labelled test images beside %d labelled rows", n_pseudo,
                  len(tr_idx))
    train_loader = _loader(images, labels, train_tf, train_cfg.batch_size, train=True, **kw)
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

    manifest = {
        "config": train_cfg.model_dump(mode="json"),
        "backbone": train_cfg.model.name,
        "n_folds": cfg.data.n_folds,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "history": state.history,
        "test_csv": str(cfg.data.test_csv),
        "folds_csv": str(cfg.data.folds_csv),
        "mlflow_run_id": None,
        **({"pseudo_images": n_pseudo} if train_cfg.pseudo is not None else {}),
        **(extra_manifest or {}),
    }
    views = _Views(cfg, data, va_idx, targets[va_idx], train_cfg, device, kw, progress,
                   log_every_s, t0)
    store = PredictionStore(cfg.sweep_dir)
    path = None
    for weights in ("ema", "raw"):  # the candidate itself last: its manifest says "all done"
        sets = [s for s in prediction_sets(train_cfg) if s.weights == weights]
        if sets:
            path = _write_sets(store, fold, sets[::-1], state, views, manifest,
                               cfg.save_weights)
    return TrialResult(cid, fold, state.best_epoch, state.epoch, dict(state.best_metrics), path)


class _Views:
    """A trained fold's views: the val and test loaders of each, made when first asked for (the
    `scale` view's images come from the image cache at its size), and what each predicts."""

    def __init__(self, cfg: SweepConfig, data: PreparedData, va_idx: np.ndarray,
                 val_targets: np.ndarray, train_cfg: TrainConfig, device: torch.device,
                 kw: dict[str, Any], progress: bool, log_every_s: float | None,
                 t0: float) -> None:
        self.cfg, self.data, self.va_idx, self.val_targets = cfg, data, va_idx, val_targets
        self.train_cfg, self.device, self.kw = train_cfg, device, kw
        self.progress, self.log_every_s, self.t0 = progress, log_every_s, t0
        self._loaders: dict[int, tuple[DataLoader, DataLoader]] = {}

    def loaders(self, view: str) -> tuple[DataLoader, DataLoader]:
        size = view_img_size(view, self.train_cfg.img_size)
        if size not in self._loaders:
            data = self.data if size == self.train_cfg.img_size else \
                resized(self.cfg, self.data, size, self.progress)
            tf, bs = build_eval_transform(size), self.train_cfg.batch_size
            self._loaders[size] = (
                _loader(_Subset(data.train_images, self.va_idx), self.val_targets, tf, bs,
                        train=False, **self.kw),
                _loader(data.test_images, None, tf, bs, train=False, **self.kw))
        return self._loaders[size]

    def predict(self, model: torch.nn.Module, view: str, val_probs: np.ndarray | None,
                metrics: dict[str, float]) -> tuple[np.ndarray, dict[str, float], np.ndarray]:
        """(val_probs, their val metrics, test_probs) of `view`; `val_probs` and `metrics`
        when the evaluation that chose the best epoch already made them."""
        val_loader, test_loader = self.loaders(view)
        how = {"tta_hflip": view == "hflip_avg", "mirror": view == "hflip"}
        if val_probs is None:
            metrics, val_probs = evaluate(model, val_loader, self.val_targets, self.device,
                                          how["tta_hflip"], mirror=how["mirror"])
        test_probs = predict(model, test_loader, self.device, how["tta_hflip"], self.progress,
                             f"test {view}", self.log_every_s, mirror=how["mirror"])
        return val_probs, metrics, test_probs


def _write_sets(store: PredictionStore, fold: int, sets: list[PredictionSet], state: FitState,
                views: _Views, manifest: dict[str, Any], save_weights: bool) -> Any:
    """Store `sets` (one weights kind's, its own view last) from that kind's best epoch.

    Every set's OOF rows are this fold's validation rows, predicted by this fold's model:
    the raw weights or their moving average, each at the epoch its own validation chose. The
    weights file is written once, beside the set in the candidate's own view; the others
    name it (`weights_candidate`). Returns the last manifest's path.
    """
    own = sets[-1]
    assert own.view == own_view(views.train_cfg), "the own view goes last"
    if own.weights == "ema":
        best = state.ema_best
    else:
        best = {"epoch": state.best_epoch, "metrics": state.best_metrics,
                "weights": state.best_weights, "val_probs": state.best_val_probs}
    model = state.model
    if best["weights"] is not None:
        model.load_state_dict(copy.deepcopy(best["weights"]))
    files, weights_name = {}, None
    if save_weights:
        from safetensors.torch import save as st_save

        weights_name = f"fold{fold}.safetensors"
        sd = best["weights"] or model.state_dict()
        files[weights_name] = st_save({k: v.contiguous() for k, v in sd.items()})
    path = None
    for s in sets:
        # The own view's OOF probabilities are those the best epoch's evaluation scored (kept
        # by fit); only a checkpoint from before they were kept needs them predicted again.
        mine = s is own and best["val_probs"] is not None
        val_probs, metrics, test_probs = views.predict(
            model, s.view, best["val_probs"] if mine else None,
            dict(best["metrics"]) if mine else {})
        path = store.write_fold(
            s.id, fold, val_keys=views.data.train["image_path"].to_numpy()[views.va_idx],
            val_targets=views.val_targets, val_probs=val_probs,
            test_keys=views.data.test["image_path"].to_numpy(), test_probs=test_probs,
            manifest={**manifest, "best_epoch": best["epoch"], "metrics": metrics,
                      "train_seconds": time.perf_counter() - views.t0,
                      "view": s.view, "weights": s.weights, "base_candidate": s.base,
                      "weights_candidate": own.id, "weights_file": weights_name},
            files=files if s is own else None)  # written by the store, before its manifest
    return path


class _Concat:
    """Two image sequences one after the other (labelled rows, then pseudo-labelled ones)."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a) + len(self.b)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.a[i] if i < len(self.a) else self.b[i - len(self.a)]


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
