"""The optimizer builders: timm's layer-wise lr decay reaches the groups' learning rates, and
the moving average is there only when asked for."""

from __future__ import annotations

import pytest
import torch

from sketchtune.config import EmaConfig, ModelConfig, OptimConfig, SchedConfig
from sketchtune.model import build_model
from sketchtune.optim import build_ema, build_optimizer, build_scheduler, updates_per_epoch


def test_layer_decay_scales_each_layer_groups_lr_and_leaves_the_head_at_lr():
    model = build_model(ModelConfig(name="test_vit"), 4, img_size=32)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, layer_decay=0.5))
    sched = build_scheduler(opt, SchedConfig(name="cosine", warmup_epochs=0), 10, 5)
    sched.step_update(num_updates=0)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) > 2 and scales[-1] == 1.0
    assert scales[-2] == pytest.approx(0.5) and scales[0] == pytest.approx(0.5 ** (len(scales) - 1))
    for g in opt.param_groups:  # the scheduler applies the scale: lr x 0.5 ** depth from the top
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
    head = {id(p) for p in model.get_classifier().parameters()}
    assert all(g["lr_scale"] == 1.0 for g in opt.param_groups
               if any(id(p) in head for p in g["params"]))


def test_without_layer_decay_every_group_has_the_lr():
    model = build_model(ModelConfig(name="test_vit"), 4, img_size=32)
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    assert {g["lr"] for g in opt.param_groups} == {1e-3}
    assert all("lr_scale" not in g for g in opt.param_groups)


def test_ema_is_built_only_when_enabled_and_starts_as_the_model():
    model = torch.nn.Linear(3, 2)
    assert build_ema(EmaConfig(), model) is None
    ema = build_ema(EmaConfig(enabled=True, decay=0.99, warmup=False), model)
    assert all(torch.equal(a, b) for a, b in zip(ema.module.state_dict().values(),
                                                 model.state_dict().values(), strict=True))
    assert ema.decay == 0.99 and ema.use_warmup is False


def test_updates_per_epoch_counts_a_last_short_group():
    assert updates_per_epoch(10, 1) == 10
    assert updates_per_epoch(10, 3) == 4
    assert updates_per_epoch(0, 2) == 1
