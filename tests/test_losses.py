"""FocalLoss facts: it reduces to cross entropy, down-weights easy examples, and on soft targets
(Mixup) is the target-weighted mix of its losses on class indices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sketchtune.config import LossConfig, MixupConfig
from sketchtune.losses import FocalLoss, build_loss, build_mixup


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


@pytest.mark.parametrize("gamma, smoothing", [(2.0, 0.0), (2.0, 0.1), (0.0, 0.1), (1.5, 0.2)])
def test_focal_loss_on_one_hot_soft_targets_equals_the_loss_on_class_indices(batch, gamma,
                                                                            smoothing):
    logits, y = batch
    loss = FocalLoss(alpha=0.5, gamma=gamma, label_smoothing=smoothing)
    got = loss(logits, F.one_hot(y, 7).float())
    assert torch.allclose(got, loss(logits, y), atol=1e-6)


def test_focal_loss_on_mixed_targets_is_the_mix_of_the_two_losses(batch):
    logits, y = batch
    z = y.flip(0)
    lam = 0.3
    q = lam * F.one_hot(y, 7).float() + (1 - lam) * F.one_hot(z, 7).float()
    loss = FocalLoss(alpha=0.5, gamma=2.0, label_smoothing=0.1)
    per = FocalLoss(alpha=0.5, gamma=2.0, label_smoothing=0.1)
    want = lam * per(logits, y) + (1 - lam) * per(logits, z)  # the mixup criterion, per batch
    assert torch.allclose(loss(logits, q), want, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_loss_gamma0_alpha1_on_soft_targets_equals_soft_cross_entropy(batch, smoothing):
    logits, _ = batch
    q = torch.softmax(torch.randn(16, 7, generator=torch.Generator().manual_seed(1)), -1)
    want = F.cross_entropy(logits, q, label_smoothing=smoothing)
    got = FocalLoss(alpha=1.0, gamma=0.0, label_smoothing=smoothing)(logits, q)
    assert torch.allclose(got, want, atol=1e-6)


def test_build_mixup_is_off_by_default_and_makes_soft_targets_when_on():
    assert build_mixup(MixupConfig(), 7) is None
    mix = build_mixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0), 7)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 7
    xm, q = mix(x, y)
    assert xm.shape == x.shape and q.shape == (8, 7)
    assert torch.allclose(q.sum(1), torch.ones(8))
    assert (q.max(1).values >= 0.5 - 1e-6).all()  # each image keeps the larger share of its own
