"""Classification losses: multi-class focal loss (the reference pipeline's) and cross entropy,
on class indices or on soft targets (Mixup / CutMix, `build_mixup`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from torch import nn

from .config import LossConfig, MixupConfig

__all__ = ["FocalLoss", "build_loss", "build_mixup"]


class FocalLoss(nn.Module):
    """Focal loss for single-label multi-class targets (Lin et al. 2017).

    Class indices t (B,): loss_i = alpha * (1 - p_t) ** gamma * CE_i, where p_t is the softmax
    probability of the true class and CE_i the (optionally label-smoothed) cross entropy. With
    gamma=0 and alpha=1 it is exactly `F.cross_entropy(..., label_smoothing=...)`.

    Soft targets q (B, C), rows summing to 1 (Mixup's lam * onehot(a) + (1 - lam) *
    onehot(b)): the expected focal loss over the target's classes,
    loss_i = sum_c q_ic * L_i(c), where L_i(c) is the loss above with class c as the true one.
    So a one-hot q gives exactly the loss of its class index (label smoothing included), a
    mixed target gives lam * L(a) + (1 - lam) * L(b), the mixup criterion of Zhang et al.
    (2018), and with gamma=0 and alpha=1 it is `F.cross_entropy(logits, q, label_smoothing=...)`,
    which is timm's SoftTargetCrossEntropy of the smoothed target.
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
        """logits: (B, C) any float dtype; target: (B,) int64 or (B, C) float. A scalar mean."""
        logits = logits.float()  # the (1 - p) ** gamma term underflows in fp16
        if target.ndim == 2:
            return self._soft(logits, target.float())
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        # p of the true class, not exp(-ce): with label smoothing the two differ.
        p_true = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1).exp()
        return (self.alpha * (1.0 - p_true).pow(self.gamma) * ce).mean()

    def _soft(self, logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=-1)  # (B, C)
        eps = self.label_smoothing
        # CE with class c as the true one, smoothed as F.cross_entropy smooths: (B, C).
        ce = -(1.0 - eps) * logp - eps * logp.mean(dim=-1, keepdim=True)
        per_class = self.alpha * (1.0 - logp.exp()).pow(self.gamma) * ce
        return (q * per_class).sum(dim=-1).mean()


def build_loss(cfg: LossConfig) -> nn.Module:
    """The training loss; both take class indices or soft targets (torch's cross entropy takes
    class probabilities as they are)."""
    if cfg.name == "focal":
        return FocalLoss(cfg.alpha, cfg.gamma, cfg.label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def build_mixup(cfg: MixupConfig, num_classes: int) -> Mixup | None:
    """timm's Mixup (`mixup(x, y) -> (x mixed, soft targets (B, C))`), or None when it is off.

    label_smoothing=0: the loss smooths (see MixupConfig). Mixup draws from numpy's global
    generator, which the trial reseeds each epoch.
    """
    if not cfg.active:
        return None
    return Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.prob,
                 switch_prob=cfg.switch_prob, mode=cfg.mode, label_smoothing=0.0,
                 num_classes=num_classes)
