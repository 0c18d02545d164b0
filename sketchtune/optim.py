"""The optimizer, its learning-rate schedule and the weights' moving average, each built from
its config section by timm's factories, as timm's train.py builds them."""

from __future__ import annotations

import math

import timm.optim
import timm.scheduler
import timm.utils
import torch
from torch import nn

from .config import EmaConfig, OptimConfig, SchedConfig
from .errors import ConfigError

__all__ = ["build_ema", "build_optimizer", "build_scheduler", "check_optimizer",
           "updates_per_epoch"]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # timm skips weight decay on biases and norm weights (filter_bias_and_bn=True), and with
    # layer_decay scales each layer group's lr (the model's group_matcher), as its train.py does.
    return timm.optim.create_optimizer_v2(
        model, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
        layer_decay=cfg.layer_decay,
    )


def build_ema(cfg: EmaConfig, model: nn.Module) -> timm.utils.ModelEmaV3 | None:
    """timm's moving average of `model`'s weights (a copy of it), or None when off. Made from
    the model on its device and before `compile`, as timm's train.py makes it."""
    if not cfg.enabled:
        return None
    return timm.utils.ModelEmaV3(model, decay=cfg.decay, use_warmup=cfg.warmup)


def updates_per_epoch(batches: int, accum_steps: int) -> int:
    """Optimizer updates in an epoch of `batches` batches: a last short group updates too."""
    return max(1, math.ceil(batches / accum_steps))


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
