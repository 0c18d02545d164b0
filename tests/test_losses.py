"""FocalLoss facts: it reduces to cross entropy, and down-weights easy examples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sketchtune.config import LossConfig
from sketchtune.losses import FocalLoss, build_loss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 7, generator=g) * 3, torch.randint(0, 7, (16,), generator=g)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_loss_gamma0_alpha1_equals_cross_entropy(batch, smoothing):
    logits, y = batch
    want = F.cross_entropy(logits, y, label_smoothing=smoothing)
    got = FocalLoss(alpha=1.0, gamma=0.0, label_smoothing=smoothing)(logits, y)
    assert torch.allclose(got, want, atol=1e-6)


def test_focal_loss_alpha_scales_linearly(batch):
    logits, y = batch
    a = FocalLoss(alpha=0.5, gamma=2.0)(logits, y)
    b = FocalLoss(alpha=1.0, gamma=2.0)(logits, y)
    assert torch.allclose(2 * a, b)


def test_focal_loss_matches_formula(batch):
    logits, y = batch
    p = F.softmax(logits, -1)[torch.arange(16), y]
    want = (0.5 * (1 - p) ** 2 * -p.log()).mean()
    assert torch.allclose(FocalLoss(0.5, 2.0)(logits, y), want, atol=1e-6)


def test_focal_loss_downweights_confident_correct_examples():
    y = torch.tensor([0])
    easy, hard = torch.tensor([[6.0, 0.0]]), torch.tensor([[0.2, 0.0]])
    ce_ratio = F.cross_entropy(easy, y) / F.cross_entropy(hard, y)
    focal_ratio = FocalLoss(1.0, 2.0)(easy, y) / FocalLoss(1.0, 2.0)(hard, y)
    assert focal_ratio < ce_ratio / 10


def test_focal_loss_gradient_is_finite_in_half_precision_logits():
    logits = (torch.randn(4, 5) * 20).half().requires_grad_()
    FocalLoss()(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("kwargs, msg", [({"alpha": 0}, "alpha"), ({"gamma": -1}, "gamma"),
                                         ({"label_smoothing": 1.0}, "label_smoothing")])
def test_focal_loss_rejects_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        FocalLoss(**kwargs)


def test_build_loss_ce_is_cross_entropy(batch):
    logits, y = batch
    loss = build_loss(LossConfig(name="ce"))
    assert torch.allclose(loss(logits, y), F.cross_entropy(logits, y))
