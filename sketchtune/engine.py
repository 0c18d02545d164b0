"""Training engine: train_one_epoch / evaluate / predict / fit; no Ray, MLflow or config files."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm.optim
import timm.scheduler
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import OptimConfig, SchedConfig
from .errors import ConfigError

__all__ = [
    "FitState",
    "build_optimizer",
    "build_scheduler",
    "check_optimizer",
    "evaluate",
    "fit",
    "load_best",
    "predict",
    "select_device",
    "train_one_epoch",
]

Report = Callable[[dict[str, float]], None]

_log = logging.getLogger(__name__)


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


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # timm skips weight decay on biases and norm weights (filter_bias_and_bn=True).
    return timm.optim.create_optimizer_v2(
        model, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )


def check_optimizer(cfg: OptimConfig, source: str) -> None:
    """ConfigError naming `source` unless timm can build this optimizer (tried on one layer)."""
    try:
        build_optimizer(nn.Linear(1, 1), cfg)
    except ValueError as err:  # timm: "Optimizer x not found in registry"
        raise ConfigError(f"{source}: optim.name {cfg.name!r}: {err}; "
                          "timm.optim.list_optimizers() lists them") from None


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps_per_epoch: int
) -> timm.scheduler.scheduler.Scheduler | None:
    """A timm scheduler stepped per update (`step_update`), so warmup is smooth on small data."""
    if cfg.name == "none":
        return None
    sched, _ = timm.scheduler.create_scheduler_v2(
        optimizer,
        sched=cfg.name,
        num_epochs=epochs,
        decay_epochs=max(1, epochs // 3),  # used by "step" only
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=min(cfg.warmup_epochs, max(epochs - 1, 0)),
        plateau_mode="max",
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return sched


@contextlib.contextmanager
def _autocast(device: torch.device) -> Iterator[None]:
    # AMP on CUDA only: bf16 where the GPU has it (no loss scaling needed), else fp16.
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


class _Meter:
    """One loop's images counted: a tqdm bar (img/s, ETA) for a person at a terminal, and a
    log line every `log_every_s` seconds for a log nobody watches live (a Ray trial's)."""

    def __init__(self, loader: Iterable, desc: str, progress: bool,
                 log_every_s: float | None) -> None:
        # Any iterable of batches works (a benchmark passes an islice of a loader); without a
        # length there is no total, so the bar counts and the log line has no ETA.
        self.desc, self.every = desc, log_every_s
        self.batches = len(loader) if hasattr(loader, "__len__") else None
        bs = getattr(loader, "batch_size", None) or 1
        dataset = getattr(loader, "dataset", None)
        self.total = None if self.batches is None else \
            min(self.batches * bs, len(dataset)) if dataset is not None else self.batches * bs
        self.bar = tqdm(total=self.total, desc=desc, unit="img", disable=not progress,
                        leave=False, dynamic_ncols=True)
        self.t0 = self.last = time.perf_counter()
        self.n = self.i = 0

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.n += n
        self.i += 1
        now = time.perf_counter()
        if self.every is None or now - self.last < self.every or self.i == self.batches:
            return
        self.last = now
        rate = self.n / (now - self.t0)
        eta = (self.total - self.n) / rate if rate > 0 and self.total is not None else math.inf
        _log.info("%s: batch %d/%s, %.1f img/s, ETA %s", self.desc, self.i,
                  "?" if self.batches is None else self.batches, rate, _clock(eta))

    def close(self) -> None:
        # Show the final count before the bar goes: tqdm skips redraws closer than 0.1 s
        # apart, so a fast loop would otherwise end on a stale count.
        if not self.bar.disable:
            self.bar.refresh()
        self.bar.close()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


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


def train_one_epoch(
    state: FitState, loader: DataLoader, loss_fn: nn.Module, device: torch.device, *,
    progress: bool = False, log_every_s: float | None = None, desc: str = "train",
) -> dict[str, float]:
    """One pass over `loader`; returns train_loss, lr and images_per_s.

    `progress`: a bar of images, img/s and ETA; `log_every_s`: the same as a log line.
    """
    model, opt = state.model, state.optimizer
    model.train()
    total, n, t0 = 0.0, 0, time.perf_counter()
    meter = _Meter(loader, desc, progress, log_every_s)
    for x, y in loader:
        x, y = _to_device(x, device), y.to(device, non_blocking=True)
        with _autocast(device):
            loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {state.epoch}")
        opt.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.step(opt)
            state.scaler.update()
        else:
            loss.backward()
            opt.step()
        state.num_updates += 1
        if state.scheduler is not None:
            state.scheduler.step_update(num_updates=state.num_updates)
        total += loss.item() * len(y)
        n += len(y)
        meter.update(len(y))
    meter.close()
    seconds = time.perf_counter() - t0
    return {
        "train_loss": total / max(n, 1),
        "lr": float(opt.param_groups[0]["lr"]),
        "images_per_s": n / seconds if seconds > 0 else 0.0,
    }


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, tta_hflip: bool = False,
    progress: bool = False, desc: str = "predict", log_every_s: float | None = None,
) -> np.ndarray:
    """Softmax probabilities, (N, C) float32, in loader order (the loader must not shuffle)."""
    model.eval()
    out = []
    meter = _Meter(loader, desc, progress, log_every_s)
    for batch in loader:
        x = _to_device(batch[0], device)
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
    desc: str = "val",
) -> tuple[dict[str, float], np.ndarray]:
    """val_loss (plain cross entropy, so candidates with different losses compare) and val_acc.

    targets: (N,) int64 in loader order. Returns (metrics, probs (N, C) float32): the probs
    are `predict(model, loader, device, tta_hflip)`, the very numbers the metrics scored.
    """
    probs = predict(model, loader, device, tta_hflip, progress, desc, log_every_s)
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
    progress: bool = False,
    log_every_s: float | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
) -> FitState:
    """Train from `state.epoch` to `epochs` (or early stop), keeping the best weights.

    `report(metrics)` is called once per epoch with flat names: epoch, train_loss, val_loss,
    val_acc, lr, images_per_s, epoch_time_s, best_val_acc. It may raise to stop training
    (a scheduler's decision); the state is consistent whenever it is called.
    `on_epoch_start(epoch)` runs before each epoch (the caller reseeds its randomness there,
    so an epoch's randomness depends on the epoch alone and a resumed run repeats exactly).
    `progress` shows bars inside each epoch (batches as images, img/s, ETA); `log_every_s`
    logs the same as a line every so many seconds (a Ray trial's only live feedback: Tune's
    table shows reported metrics, and a report per interval would count as an ASHA step).
    The best epoch's validation probabilities are kept in `state.best_val_probs`.
    """
    bar = tqdm(range(state.epoch, epochs), desc="epochs", disable=not progress,
               initial=state.epoch, total=epochs)
    for epoch in bar:
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        t0 = time.perf_counter()
        where = f"epoch {epoch + 1}/{epochs}"
        metrics = train_one_epoch(state, train_loader, loss_fn, device, progress=progress,
                                  log_every_s=log_every_s, desc=f"{where} train")
        val, probs = evaluate(state.model, val_loader, val_targets, device, tta_hflip,
                              progress=progress, log_every_s=log_every_s, desc=f"{where} val")
        metrics.update(val)
        if not math.isfinite(metrics["val_loss"]):
            raise FloatingPointError(f"val_loss is {metrics['val_loss']} at epoch {epoch}")
        state.epoch = epoch + 1
        if _is_better(metrics, state.best_metrics):
            state.best_epoch = epoch + 1
            state.best_metrics = {"val_acc": metrics["val_acc"], "val_loss": metrics["val_loss"]}
            state.best_weights = {k: v.detach().to("cpu", copy=True)
                                  for k, v in state.model.state_dict().items()}
            state.best_val_probs = probs
        metrics.update(epoch=epoch + 1, epoch_time_s=time.perf_counter() - t0,
                       best_val_acc=state.best_metrics["val_acc"])
        state.history.append(dict(metrics))
        state.stopped_early = state.epoch - state.best_epoch >= patience and state.epoch < epochs
        bar.set_postfix(val_acc=f"{metrics['val_acc']:.3f}", best=f"{state.best_epoch}")
        report(metrics)
        if state.stopped_early:
            break
    return state


def load_best(state: FitState) -> nn.Module:
    """Put the best epoch's weights into the model (a deep copy of them) and return it."""
    if state.best_weights is not None:
        state.model.load_state_dict(copy.deepcopy(state.best_weights))
    return state.model
