"""The engine on CPU with tiny timm models: best-epoch bookkeeping, early stopping, resume,
gradient accumulation, EMA weights, Mixup, torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sketchtune.config import EmaConfig, ModelConfig, OptimConfig, SchedConfig
from sketchtune.engine import FitState, evaluate, fit, load_best, predict, train_one_epoch
from sketchtune.losses import FocalLoss
from sketchtune.model import build_model
from sketchtune.optim import build_ema, build_optimizer, build_scheduler, updates_per_epoch

CPU = torch.device("cpu")


@pytest.fixture
def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, 32, 32, generator=g)
    y = torch.arange(96) % 4
    x[:, 0] += y[:, None, None].float()  # a signal a small net can learn
    tl = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                    generator=torch.Generator().manual_seed(0))
    vl = DataLoader(TensorDataset(x, y), batch_size=32)
    return tl, vl, y.numpy()


def make_state(steps: int, epochs: int, lr: float = 3e-3) -> FitState:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="test_resnet"), 4)
    opt = build_optimizer(model, OptimConfig(lr=lr))
    return FitState(model, opt, build_scheduler(opt, SchedConfig(), epochs, steps))


def test_fit_reports_every_epoch_and_keeps_best_weights(loaders):
    tl, vl, y = loaders
    state, out = make_state(len(tl), 3), []
    fit(state, tl, vl, y, FocalLoss(), epochs=3, patience=5, device=CPU, report=out.append)
    assert [m["epoch"] for m in out] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_acc", "lr", "images_per_s"} <= set(out[0])
    best = max(out, key=lambda m: (m["val_acc"], -m["val_loss"]))
    assert state.best_epoch == best["epoch"]
    metrics, _ = evaluate(load_best(state), vl, y, CPU)
    assert metrics["val_acc"] == pytest.approx(best["val_acc"])


def test_fit_stops_early_after_patience(loaders):
    tl, vl, y = loaders
    state, out = make_state(len(tl), 20, lr=1e-9), []  # lr ~0: nothing ever improves
    fit(state, tl, vl, y, FocalLoss(), epochs=20, patience=2, device=CPU, report=out.append)
    assert state.stopped_early
    assert len(out) == state.best_epoch + 2 < 20


def test_fit_resumes_from_state_dict(loaders, tmp_path):
    tl, vl, y = loaders
    state = make_state(len(tl), 3)
    fit(state, tl, vl, y, FocalLoss(), epochs=2, patience=5, device=CPU, report=lambda m: None)
    torch.save(state.state_dict(), tmp_path / "s.pt")
    again = make_state(len(tl), 3)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    out = []
    fit(again, tl, vl, y, FocalLoss(), epochs=3, patience=5, device=CPU, report=out.append)
    assert [m["epoch"] for m in out] == [3] and len(again.history) == 3


def test_predict_rows_are_probabilities_and_tta_is_symmetric(loaders):
    _, vl, _ = loaders
    model = make_state(1, 1).model
    p = predict(model, vl, CPU)
    assert p.shape == (96, 4) and p.dtype == np.float32
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    flipped = DataLoader(TensorDataset(torch.flip(vl.dataset.tensors[0], dims=[3]),
                                       vl.dataset.tensors[1]), batch_size=32)
    assert np.allclose(predict(model, vl, CPU, tta_hflip=True),
                       predict(model, flipped, CPU, tta_hflip=True), atol=1e-5)


@pytest.mark.parametrize("tta", [False, True])
def test_fit_keeps_best_epoch_val_probs_equal_to_a_fresh_predict(loaders, tta, tmp_path):
    tl, vl, y = loaders
    state = make_state(len(tl), 3)
    fit(state, tl, vl, y, FocalLoss(), epochs=3, patience=5, device=CPU, report=lambda m: None,
        tta_hflip=tta)
    kept = state.best_val_probs
    assert kept is not None and kept.shape == (96, 4) and kept.dtype == np.float32
    fresh = predict(load_best(state), vl, CPU, tta_hflip=tta)
    assert np.abs(kept - fresh).max() < 1e-6
    # They travel with the checkpoint, so a resumed trial needs no second pass either.
    torch.save(state.state_dict(), tmp_path / "s.pt")
    again = make_state(len(tl), 3)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert np.array_equal(again.best_val_probs, kept)


def test_epoch_progress_bar_and_log_lines_show_batches_rate_and_eta(loaders, capsys, caplog):
    tl, vl, y = loaders
    state = make_state(len(tl), 1)
    with caplog.at_level("INFO", logger="sketchtune.meter"):
        fit(state, tl, vl, y, FocalLoss(), epochs=1, patience=5, device=CPU,
            report=lambda m: None, progress=True, log_every_s=0.0)
    bars = capsys.readouterr().err
    assert "epoch 1/1 train" in bars and "img/s" in bars and "epoch 1/1 val" in bars
    assert "96/96" in bars  # images, not batches
    lines = [r.getMessage() for r in caplog.records]
    # Every batch but the last of each loop (log_every_s=0): 6 train and 3 val batches.
    train = [m for m in lines if m.startswith("epoch 1/1 train: batch ")]
    assert [m.split()[4] for m in train] == [f"{i}/6," for i in range(1, 6)]
    assert all("img/s, ETA " in m for m in train)
    assert sum(m.startswith("epoch 1/1 val: batch ") for m in lines) == 2


def _vit_state(accum_steps: int = 1, ema: bool = False, lr: float = 0.5,
               batches: int = 2) -> FitState:
    # A model without batch norm (LayerNorm only), no dropout: a batch's gradient depends on
    # its own images only, so splitting a batch changes nothing but float rounding. SGD: its
    # update is the gradient itself (Adam's first step is about its sign, which rounding can
    # flip where a gradient is ~0).
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="test_vit"), 4, img_size=32)
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=lr, weight_decay=0.0))
    sched = build_scheduler(opt, SchedConfig(warmup_epochs=0), 3,
                            updates_per_epoch(batches, accum_steps))
    return FitState(model, opt, sched, ema=build_ema(EmaConfig(enabled=ema), model))


def _batches(x, y, size):
    return DataLoader(TensorDataset(x, y), batch_size=size, shuffle=False)


def test_accumulating_2x16_is_the_update_of_one_batch_of_32():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 32, 32, generator=g), torch.arange(32) % 4
    one, two = _vit_state(batches=1), _vit_state(accum_steps=2, batches=2)
    a = train_one_epoch(one, _batches(x, y, 32), FocalLoss(), CPU)
    b = train_one_epoch(two, _batches(x, y, 16), FocalLoss(), CPU, accum_steps=2)
    assert one.num_updates == two.num_updates == 1
    assert a["lr"] == b["lr"]  # the schedule stepped once per update, not per batch
    for (name, p), q in zip(one.model.named_parameters(), two.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5), name
    moved = [(p - q).abs().max().item() for p, q in zip(
        one.model.parameters(), _vit_state().model.parameters(), strict=True)]
    assert max(moved) > 1e-3  # the update was not a no-op


def test_accumulation_updates_a_last_short_group_with_its_own_mean():
    # 48 images in batches of 16, 2 per update: 32 then 16 images, as batches of 32 and 16.
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(48, 3, 32, 32, generator=g), torch.arange(48) % 4
    plain, accum = _vit_state(batches=2), _vit_state(accum_steps=2, batches=3)
    train_one_epoch(plain, _batches(x, y, 32), FocalLoss(), CPU)
    train_one_epoch(accum, _batches(x, y, 16), FocalLoss(), CPU, accum_steps=2)
    assert plain.num_updates == accum.num_updates == 2
    for p, q in zip(plain.model.parameters(), accum.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5)


def _reseeded(tl):
    def reseed(epoch):  # as run_trial does: an epoch's randomness depends on the epoch only
        torch.manual_seed(epoch)
        tl.generator.manual_seed(epoch)
    return reseed


def test_fit_with_ema_validates_both_weights_and_keeps_each_ones_best_epoch(loaders):
    tl, vl, y = loaders
    state = make_state(len(tl), 3)
    state.ema = build_ema(EmaConfig(enabled=True, decay=0.9), state.model)
    out = []
    fit(state, tl, vl, y, FocalLoss(), epochs=3, patience=5, device=CPU, report=out.append)
    assert all({"ema_val_acc", "ema_val_loss"} <= set(m) for m in out)
    best = max(out, key=lambda m: (m["ema_val_acc"], -m["ema_val_loss"]))
    assert state.ema_best["epoch"] == best["epoch"]
    assert state.ema_best["metrics"] == {"val_loss": best["ema_val_loss"],
                                         "val_acc": best["ema_val_acc"]}
    # The kept EMA weights give the kept EMA probabilities, and they are not the raw weights'.
    model = make_state(1, 1).model
    model.load_state_dict(state.ema_best["weights"])
    assert np.abs(predict(model, vl, CPU) - state.ema_best["val_probs"]).max() < 1e-6
    assert not np.allclose(state.ema_best["val_probs"], state.best_val_probs)


def test_fit_with_ema_and_mixup_resumed_from_state_dict_repeats_exactly(loaders, tmp_path):
    from sketchtune.config import MixupConfig
    from sketchtune.losses import build_mixup

    tl, vl, y = loaders
    mix = build_mixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0), 4)

    def run(epochs, state):
        def reseed(epoch):
            _reseeded(tl)(epoch)
            np.random.seed(epoch)  # Mixup draws from numpy's generator
        fit(state, tl, vl, y, FocalLoss(), epochs=epochs, patience=5, device=CPU,
            report=lambda m: None, mixup=mix, on_epoch_start=reseed)
        return state

    def fresh():
        s = make_state(len(tl), 3)
        s.ema = build_ema(EmaConfig(enabled=True, decay=0.9), s.model)
        return s

    straight = run(3, fresh())
    torch.save(run(2, fresh()).state_dict(), tmp_path / "s.pt")
    resumed = fresh()
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    run(3, resumed)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert straight.ema_best["epoch"] == resumed.ema_best["epoch"]
    assert np.array_equal(straight.ema_best["val_probs"], resumed.ema_best["val_probs"])
    assert [h["train_loss"] for h in straight.history] == \
        [h["train_loss"] for h in resumed.history]


@pytest.mark.slow
def test_compiled_model_trains_and_predicts_as_the_plain_one(loaders):
    # A two-layer net: torch.compile on a CPU builds C++ kernels, minutes for a timm model
    # (benchmarks/gpu_check.py compiles a real backbone on the GPU).
    tl, vl, y = loaders

    def state():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 16),
                                    torch.nn.GELU(), torch.nn.Linear(16, 4))
        return FitState(model, build_optimizer(model, OptimConfig(lr=3e-3)))

    plain, compiled = state(), state()
    compiled.model.compile()  # what run_trial does with train.compile
    for s in (plain, compiled):
        fit(s, tl, vl, y, FocalLoss(), epochs=2, patience=5, device=CPU,
            report=lambda m: None, on_epoch_start=_reseeded(tl))
    assert list(plain.model.state_dict()) == list(compiled.model.state_dict())  # same keys
    assert np.abs(predict(plain.model, vl, CPU) - predict(compiled.model, vl, CPU)).max() < 1e-4
    assert plain.best_epoch == compiled.best_epoch
