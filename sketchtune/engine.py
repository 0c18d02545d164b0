"""Training engine: train_one_epoch / evaluate / predict / fit; no Ray, MLflow or config files."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm.utils
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .errors import ConfigError
from .meter import Meter

__all__ = [
    "FitState",
    "evaluate",
    "fit",
    "load_best",
    "predict",
    "select_device",
    "train_one_epoch",
]

Report = Callable[[dict[str, float]], None]


def select_device(prefer: str | None = None) -> torch.device:
    """`prefer` ("cpu", "cuda:1", ...) or the best device here; ConfigError if it cannot work."""
    if prefer:
        try:
            device = torch.device(prefer)
        except RuntimeError:
            raise ConfigError(f"--device {prefer!r}: not a torch device; use cpu, cuda or "
                              "mps") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"--device {prefer!r}: this machine has no CUDA device; "
                                  "use --device cpu")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ConfigError(f"--device {prefer!r}: this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s)")
        elif device.type == "mps":
            if not torch.backends.mps.is_available():
                raise ConfigError(f"--device {prefer!r}: this machine has no Apple MPS device; "
                                  "use --device cpu")
        elif device.type != "cpu":
            # torch names more device types (xpu, meta, ...) than the trainer supports.
            raise ConfigError(f"--device {prefer!r}: unsupported here; use cpu, cuda or mps")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _autocast(device: torch.device) -> Iterator[None]:
    # AMP on CUDA only: bf16 where the GPU has it (no loss scaling needed), else fp16.
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device)


@dataclass
class FitState:
    """Everything `fit` needs to continue after a restart; mutated in place by `fit`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0  # epochs completed
    num_updates: int = 0
    best_epoch: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_weights: dict[str, torch.Tensor] | None = None
    # The best epoch's validation probabilities, (N_val, C) float32, from the evaluation that
    # chose that epoch: the trial stores them rather than predicting the val rows again.
    best_val_probs: np.ndarray | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    ema: timm.utils.ModelEmaV3 | None = None  # the weights' moving average (build_ema), or None
    # The EMA weights' best epoch as the four best_* fields are the raw weights': "epoch",
    # "metrics", "weights" and "val_probs" ({} until the first epoch with EMA, or without it).
    ema_best: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, so `torch.load(weights_only=True)` can read it."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "num_updates": self.num_updates,
            "best_epoch": self.best_epoch,
            "best_metrics": dict(self.best_metrics),
            "best_weights": self.best_weights,
            "best_val_probs": (torch.from_numpy(self.best_val_probs)
                               if self.best_val_probs is not None else None),
            "history": list(self.history),
            "stopped_early": self.stopped_early,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_best": {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                         for k, v in self.ema_best.items()},
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        if self.scheduler is not None and d.get("scheduler") is not None:
            self.scheduler.load_state_dict(d["scheduler"])
        if self.scaler is not None and d.get("scaler") is not None:
            self.scaler.load_state_dict(d["scaler"])
        for k in ("epoch", "num_updates", "best_epoch", "best_metrics", "best_weights",
                  "history", "stopped_early"):
            setattr(self, k, d[k])
        # Absent from checkpoints older than the key: the trial then predicts them again.
        p = d.get("best_val_probs")
        self.best_val_probs = p.numpy() if p is not None else None
        if self.ema is not None and d.get("ema") is not None:
            self.ema.load_state_dict(d["ema"])
        self.ema_best = {k: v.numpy() if k == "val_probs" else v
                         for k, v in (d.get("ema_best") or {}).items()}


def train_one_epoch(
    state: FitState, loader: DataLoader, loss_fn: nn.Module, device: torch.device, *,
    mixup: Callable | None = None, accum_steps: int = 1,
    progress: bool = False, log_every_s: float | None = None, desc: str = "train",
) -> dict[str, float]:
    """One pass over `loader`; returns train_loss, lr and images_per_s.

    `mixup(x, y) -> (x, soft targets)`: timm's Mixup, applied to each batch on the device.
    `accum_steps`: batches per optimizer update, as timm's train.py accumulates: each batch's
    loss is divided by its group's size (the last group of an epoch may be shorter), so an
    update follows the mean loss over the group's images when batches are equal; the EMA and
    the scheduler step per update. `progress`: a bar of images, img/s and ETA; `log_every_s`:
    the same as a log line.
    """
    model, opt = state.model, state.optimizer
    model.train()
    total, n, t0 = 0.0, 0, time.perf_counter()
    meter = Meter(loader, desc, progress, log_every_s)
    batches = len(loader) if hasattr(loader, "__len__") else None
    last_group = batches - batches % accum_steps if batches and batches % accum_steps else None
    opt.zero_grad(set_to_none=True)
    pending = False
    for i, (x, y) in enumerate(loader):
        x, y = _to_device(x, device), y.to(device, non_blocking=True)
        if mixup is not None:
            x, y = mixup(x, y)
        with _autocast(device):
            loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {state.epoch}")
        group = batches % accum_steps if last_group is not None and i >= last_group \
            else accum_steps
        scaled = loss / group if group > 1 else loss
        (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        pending = (i + 1) % accum_steps != 0 and i + 1 != batches
        if not pending:
            _update(state)
        total += loss.item() * len(y)
        n += len(y)
        meter.update(len(y))
    if pending:  # a loader without a length ended inside a group
        _update(state)
    meter.close()
    seconds = time.perf_counter() - t0
    return {
        "train_loss": total / max(n, 1),
        # The largest group's: with layer_decay the head's, the lr the config sets.
        "lr": max(float(g["lr"]) for g in opt.param_groups),
        "images_per_s": n / seconds if seconds > 0 else 0.0,
    }


def _update(state: FitState) -> None:
    """One optimizer update from the accumulated gradients, then the EMA and the schedule."""
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.num_updates += 1
    if state.ema is not None:
        state.ema.update(state.model, step=state.num_updates)
    if state.scheduler is not None:
        state.scheduler.step_update(num_updates=state.num_updates)


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, tta_hflip: bool = False,
    progress: bool = False, desc: str = "predict", log_every_s: float | None = None, *,
    mirror: bool = False,
) -> np.ndarray:
    """Softmax probabilities, (N, C) float32, in loader order (the loader must not shuffle).

    `mirror`: of the mirrored images; `tta_hflip`: the mean of the image's and the mirrored's.
    """
    model.eval()
    out = []
    meter = Meter(loader, desc, progress, log_every_s)
    for batch in loader:
        x = _to_device(batch[0], device)
        if mirror:
            x = torch.flip(x, dims=[3])
        with _autocast(device):
            p = F.softmax(model(x).float(), dim=-1)
            if tta_hflip:
                p = 0.5 * (p + F.softmax(model(torch.flip(x, dims=[3])).float(), dim=-1))
        out.append(p.cpu())
        meter.update(len(x))
    meter.close()
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def evaluate(
    model: nn.Module, loader: DataLoader, targets: np.ndarray, device: torch.device,
    tta_hflip: bool = False, *, progress: bool = False, log_every_s: float | None = None,
    desc: str = "val", mirror: bool = False,
) -> tuple[dict[str, float], np.ndarray]:
    """val_loss (plain cross entropy, so candidates with different losses compare) and val_acc.

    targets: (N,) int64 in loader order. Returns (metrics, probs (N, C) float32): the probs
    are `predict(model, loader, device, tta_hflip, mirror=mirror)`, the numbers the metrics
    scored.
    """
    probs = predict(model, loader, device, tta_hflip, progress, desc, log_every_s,
                    mirror=mirror)
    t = torch.as_tensor(targets, dtype=torch.long)
    p = torch.from_numpy(probs).clamp_min(1e-12)
    val_loss = F.nll_loss(p.log(), t).item()
    val_acc = (p.argmax(1) == t).sum().item() / max(len(t), 1)  # exact, not a float32 mean
    return {"val_loss": val_loss, "val_acc": val_acc}, probs


def _is_better(m: dict[str, float], best: dict[str, float]) -> bool:
    # Best by val_acc; on a tie the lower val_loss wins.
    if not best:
        return True
    if m["val_acc"] != best["val_acc"]:
        return m["val_acc"] > best["val_acc"]
    return m["val_loss"] < best["val_loss"]


def fit(
    state: FitState,
    train_loader: DataLoader,
    val_loader: DataLoader,
    val_targets: np.ndarray,
    loss_fn: nn.Module,
    *,
    epochs: int,
    patience: int,
    device: torch.device,
    report: Report,
    tta_hflip: bool = False,
    mixup: Callable | None = None,
    accum_steps: int = 1,
    progress: bool = False,
    log_every_s: float | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
) -> FitState:
    """Train from `state.epoch` to `epochs` (or early stop), keeping the best weights.

    `report(metrics)` is called once per epoch with flat names: epoch, train_loss, val_loss,
    val_acc, lr, images_per_s, epoch_time_s, best_val_acc, and with `state.ema` ema_val_loss
    and ema_val_acc (the EMA weights', validated the same way). It may raise to stop training
    (a scheduler's decision); the state is consistent whenever it is called.
    `on_epoch_start(epoch)` runs before each epoch (the caller reseeds its randomness there,
    so an epoch's randomness depends on the epoch alone and a resumed run repeats exactly).
    `progress` shows bars inside each epoch (batches as images, img/s, ETA); `log_every_s`
    logs the same as a line every so many seconds (a Ray trial's only live feedback: Tune's
    table shows reported metrics, and a report per interval would count as an ASHA step).
    The best epoch's validation probabilities are kept in `state.best_val_probs`; the EMA
    weights' best epoch, chosen by their own val_acc, in `state.ema_best`. Early stopping
    waits `patience` epochs after the later of the two. `mixup`, `accum_steps`: see
    `train_one_epoch`.
    """
    bar = tqdm(range(state.epoch, epochs), desc="epochs", disable=not progress,
               initial=state.epoch, total=epochs)
    for epoch in bar:
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        t0 = time.perf_counter()
        where = f"epoch {epoch + 1}/{epochs}"
        metrics = train_one_epoch(state, train_loader, loss_fn, device, mixup=mixup,
                                  accum_steps=accum_steps, progress=progress,
                                  log_every_s=log_every_s, desc=f"{where} train")
        val, probs = evaluate(state.model, val_loader, val_targets, device, tta_hflip,
                              progress=progress, log_every_s=log_every_s, desc=f"{where} val")
        metrics.update(val)
        if state.ema is not None:
            ema_val, ema_probs = evaluate(state.ema.module, val_loader, val_targets, device,
                                          tta_hflip, progress=progress,
                                          log_every_s=log_every_s, desc=f"{where} val ema")
            metrics.update({f"ema_{k}": v for k, v in ema_val.items()})
        if not math.isfinite(metrics["val_loss"]):
            raise FloatingPointError(f"val_loss is {metrics['val_loss']} at epoch {epoch}")
        state.epoch = epoch + 1
        if _is_better(metrics, state.best_metrics):
            state.best_epoch = epoch + 1
            state.best_metrics = {"val_acc": metrics["val_acc"], "val_loss": metrics["val_loss"]}
            state.best_weights = _cpu_copy(state.model)
            state.best_val_probs = probs
        if state.ema is not None and _is_better(ema_val, state.ema_best.get("metrics", {})):
            state.ema_best = {"epoch": epoch + 1, "metrics": ema_val,
                              "weights": _cpu_copy(state.ema.module), "val_probs": ema_probs}
        metrics.update(epoch=epoch + 1, epoch_time_s=time.perf_counter() - t0,
                       best_val_acc=state.best_metrics["val_acc"])
        state.history.append(dict(metrics))
        last_best = max(state.best_epoch, state.ema_best.get("epoch", 0))
        state.stopped_early = state.epoch - last_best >= patience and state.epoch < epochs
        bar.set_postfix(val_acc=f"{metrics['val_acc']:.3f}", best=f"{state.best_epoch}")
        report(metrics)
        if state.stopped_early:
            break
    return state


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def load_best(state: FitState) -> nn.Module:
    """Put the best epoch's weights into the model (a deep copy of them) and return it."""
    if state.best_weights is not None:
        state.model.load_state_dict(copy.deepcopy(state.best_weights))
    return state.model
