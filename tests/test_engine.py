"""The engine on CPU with a tiny timm model: best-epoch bookkeeping, early stopping, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sketchtune.config import ModelConfig, OptimConfig, SchedConfig
from sketchtune.engine import (
    FitState,
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    load_best,
    predict,
)
from sketchtune.losses import FocalLoss
from sketchtune.model import build_model

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
    with caplog.at_level("INFO", logger="sketchtune.engine"):
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
