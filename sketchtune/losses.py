"""Classification losses: multi-class focal loss (the reference pipeline's) and cross entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig

__all__ = ["FocalLoss", "build_loss"]


class FocalLoss(nn.Module):
    """Focal loss for single-label multi-class targets (Lin et al. 2017).

    loss_i = alpha * (1 - p_i) ** gamma * CE_i, where p_i is the softmax probability of the
    true class and CE_i the (optionally label-smoothed) cross entropy. With gamma=0 and
    alpha=1 it is exactly `F.cross_entropy(..., label_smoothing=...)`.
    """

    def __init__(self, alpha: float = 0.5, gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be positive but got {alpha}.")
        if gamma < 0:
            raise ValueError(f"gamma cannot be negative but got {gamma}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1) but got {label_smoothing}.")
        self.alpha = alpha
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits: (B, C) any float dtype; target: (B,) int64. Returns a scalar mean."""
        logits = logits.float()  # the (1 - p) ** gamma term underflows in fp16
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        # p of the true class, not exp(-ce): with label smoothing the two differ.
        p_true = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1).exp()
        return (self.alpha * (1.0 - p_true).pow(self.gamma) * ce).mean()


def build_loss(cfg: LossConfig) -> nn.Module:
    if cfg.name == "focal":
        return FocalLoss(cfg.alpha, cfg.gamma, cfg.label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
