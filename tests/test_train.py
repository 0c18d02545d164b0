"""One (candidate, fold) trial end to end on the demo data, through the CLI and the function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sketchtune.config import candidate_id, prediction_sets
from sketchtune.predict import predict_csv
from sketchtune.store import PredictionStore, keys_digest
from sketchtune.train import main, run_trial


@pytest.mark.slow
def test_train_cli_writes_fold_predictions_above_chance(tiny_cfg, capsys, tmp_path):
    cfg, path = tiny_cfg(**{"train.epochs": 3})
    assert main([str(path), "--fold", "2", "--quiet"]) == 0
    cid = candidate_id(cfg.train)
    store = PredictionStore(cfg.sweep_dir)
    assert store.folds(cid) == [2]
    f = store.read_fold(cid, 2)
    folds = pd.read_csv(cfg.data.folds_csv)
    want = folds.loc[folds["fold"] == 2, "image_path"].tolist()
    test = pd.read_csv(cfg.data.test_csv)
    n_classes = folds["target"].nunique()
    assert sorted(f.val_keys.tolist()) == sorted(want)
    assert f.val_probs.shape == (len(want), n_classes) and f.val_probs.dtype == np.float32
    assert f.test_probs.shape == (len(test), n_classes)
    assert np.allclose(f.val_probs.sum(1), 1, atol=1e-4)
    assert np.allclose(f.test_probs.sum(1), 1, atol=1e-4)
    by_key = dict(zip(folds["image_path"], folds["target"], strict=True))
    assert f.val_targets.tolist() == [by_key[k] for k in f.val_keys]
    acc = float((f.val_probs.argmax(1) == f.val_targets).mean())
    assert acc == pytest.approx(f.manifest["metrics"]["val_acc"])
    assert acc > 1.0 / n_classes + 0.15, f"val_acc {acc} is not above chance"
    assert f.manifest["n_folds"] == 5 and 1 <= f.manifest["best_epoch"] <= 3
    assert f.test_keys.tolist() == test["image_path"].tolist()  # rows matched by image_path
    assert f.manifest["test_keys_sha256"] == keys_digest(test["image_path"].tolist())
    # The saved best weights reproduce the stored test predictions exactly.
    again = predict_csv(cfg, cid, cfg.data.test_csv)
    assert np.allclose(again, f.test_probs, atol=1e-5)
    # New images: absolute paths as they are, relative ones under image_root (any order).
    root = Path(cfg.data.test_csv).parent
    mixed = tmp_path / "new.csv"
    paths = test["image_path"].tolist()[::-1]
    paths = [str(root / q) if i % 2 else q for i, q in enumerate(paths)]
    pd.DataFrame({"image_path": paths}).to_csv(mixed, index=False)
    again = predict_csv(cfg, cid, mixed, image_root=root)
    assert np.allclose(again, f.test_probs[::-1], atol=1e-5)
    assert f"candidate {cid} fold 2" in capsys.readouterr().out
    # The stored OOF probabilities (kept from the evaluation that chose the best epoch, not
    # predicted again) are what a fresh predict with the saved best weights gives.
    val_csv = tmp_path / "val.csv"
    pd.DataFrame({"image_path": f.val_keys}).to_csv(val_csv, index=False)
    fresh = predict_csv(cfg, cid, val_csv, image_root=Path(cfg.data.image_root))
    assert np.abs(fresh - f.val_probs).max() < 1e-6


@pytest.mark.slow
def test_run_trial_reports_each_epoch(tiny_cfg):
    cfg, _ = tiny_cfg(save_weights=False)
    seen: list[dict] = []
    res = run_trial(cfg, cfg.train, 0, report=lambda metrics, state: seen.append(metrics))
    assert [m["epoch"] for m in seen] == [1, 2]
    assert res.best_epoch in (1, 2) and res.metrics["val_acc"] == max(m["val_acc"] for m in seen)
    assert PredictionStore(cfg.sweep_dir).read_manifest(res.candidate_id, 0)["weights_file"] is None


@pytest.mark.slow
def test_run_trial_predicts_the_val_rows_once(tiny_cfg, monkeypatch):
    import sketchtune.engine as engine
    import sketchtune.train as train

    cfg, _ = tiny_cfg(save_weights=False, **{"train.tta_hflip": True})
    rows: list[int] = []
    real = engine.predict

    def counting(model, loader, *a, **kw):
        rows.append(len(loader.dataset))
        return real(model, loader, *a, **kw)

    monkeypatch.setattr(engine, "predict", counting)  # evaluate's, once per epoch
    monkeypatch.setattr(train, "predict", counting)  # run_trial's, after training
    res = run_trial(cfg, cfg.train, 1)
    f = PredictionStore(cfg.sweep_dir).read_fold(res.candidate_id, 1)
    n_val, n_test = len(f.val_keys), len(f.test_keys)
    assert rows == [n_val, n_val, n_test]  # 2 epochs' evaluations, then the test rows only


def test_train_cli_bad_fold_is_one_line(tiny_cfg, capsys):
    _, path = tiny_cfg()
    assert main([str(path), "--fold", "7", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sketchtune.train: error:") and "--fold 7" in err and "\n" not in err


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [{}, {
    "train.ema": {"enabled": True, "decay": 0.9}, "train.accum_steps": 2,
    "train.mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}}], ids=["plain", "ema-mixup-accum"])
def test_run_trial_resumed_from_checkpoint_repeats_exactly(tiny_cfg, recipe):
    """Stop after epoch 1, resume from the saved state: the same predictions as one go, also
    with the EMA weights, Mixup/CutMix and gradient accumulation on (and the EMA set too)."""
    import torch

    cfg, _ = tiny_cfg(save_weights=False, **recipe)
    store = PredictionStore(cfg.sweep_dir)
    cfg.storage_path.mkdir(parents=True)

    class Stop(Exception):
        pass

    def keep_then_stop(metrics, state):
        torch.save(state.state_dict(), cfg.storage_path / "state.pt")  # as the Ray checkpoint
        if metrics["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, cfg.train, 3, report=keep_then_stop)
    state = torch.load(cfg.storage_path / "state.pt", weights_only=True)
    run_trial(cfg, cfg.train, 3, resume=state)
    run_trial(cfg.model_copy(update={"name": "other"}), cfg.train, 3)  # uninterrupted
    def curve(f):
        return [(h["epoch"], round(h["train_loss"], 5), round(h["val_loss"], 5), h["val_acc"],
                 h.get("ema_val_acc")) for h in f.manifest["history"]]

    for s in prediction_sets(cfg.train):  # the candidate, and its EMA weights' set if on
        resumed = store.read_fold(s.id, 3)
        straight = PredictionStore(cfg.storage_path / "other").read_fold(s.id, 3)
        assert np.abs(resumed.val_probs - straight.val_probs).max() < 1e-6
        assert np.abs(resumed.test_probs - straight.test_probs).max() < 1e-6
        assert resumed.manifest["best_epoch"] == straight.manifest["best_epoch"]
        assert curve(resumed) == curve(straight)
    assert len(prediction_sets(cfg.train)) == (2 if recipe else 1)


@pytest.mark.slow
def test_run_trial_stores_every_view_and_the_ema_weights_from_the_fold_model(tiny_cfg,
                                                                            tmp_path):
    """Every prediction set of fold k is fold k's validation rows, predicted by fold k's own
    model (trained without those rows): the saved fold weights reproduce each set, and the
    hflip_avg set is the mean of the plain and hflip sets, row for row. So a view adds no
    leak to the ensemble's honest estimate: its held-out rows come from the same fold model
    as the candidate's."""
    cfg, cfg_path = tiny_cfg(**{"train.views": ["hflip", "hflip_avg", "scale"],
                                "train.ema": {"enabled": True, "decay": 0.9}})
    res = run_trial(cfg, cfg.train, 2)
    store = PredictionStore(cfg.sweep_dir)
    sets = prediction_sets(cfg.train)
    cid = res.candidate_id
    assert [s.id for s in sets] == [cid, f"{cid}-hflip", f"{cid}-hflip_avg", f"{cid}-scale",
                                    f"{cid}-ema", f"{cid}-ema-hflip", f"{cid}-ema-hflip_avg",
                                    f"{cid}-ema-scale"]
    assert res.manifest_path == store.candidate_dir(cid) / "fold2.json"
    folds = pd.read_csv(cfg.data.folds_csv)
    rows = folds.loc[folds["fold"] == 2, "image_path"].tolist()
    base = store.read_fold(cid, 2)
    got = {}
    for s in sets:
        f = got[s.id] = store.read_fold(s.id, 2)
        m = f.manifest
        assert (m["view"], m["weights"], m["base_candidate"]) == (s.view, s.weights, cid)
        assert sorted(f.val_keys.tolist()) == sorted(rows)
        assert f.val_keys.tolist() == base.val_keys.tolist()  # the same rows in every set
        assert f.test_keys.tolist() == base.test_keys.tolist()
        assert m["weights_candidate"] == (cid if s.weights == "raw" else f"{cid}-ema")
        acc = float((f.val_probs.argmax(1) == f.val_targets).mean())
        assert acc == pytest.approx(m["metrics"]["val_acc"])  # metrics of its own probs
        # Each set's OOF rows come from its fold model: the saved weights predict them again.
        val_csv = tmp_path / "val.csv"
        pd.DataFrame({"image_path": f.val_keys}).to_csv(val_csv, index=False)
        again = predict_csv(cfg, s.id, val_csv, image_root=Path(cfg.data.image_root))
        assert np.abs(again - f.val_probs).max() < 1e-5, s.id
    for pre in (cid, f"{cid}-ema"):
        plain, flip, avg = (got[pre], got[f"{pre}-hflip"], got[f"{pre}-hflip_avg"])
        for what in ("val_probs", "test_probs"):
            mean = 0.5 * (getattr(plain, what) + getattr(flip, what))
            assert np.abs(mean - getattr(avg, what)).max() < 1e-6
        assert not np.allclose(plain.val_probs, got[f"{pre}-scale"].val_probs)
    # predict --images: a view candidate's saved weights in its view, through the CLI.
    import json

    from ensemble_search import predict as ensemble_predict

    spec = tmp_path / "ensemble.json"
    spec.write_text(json.dumps({"candidates": [{"candidate_id": f"{cid}-ema-hflip",
                                                "weight": 1.0}]}))
    out = tmp_path / "out"
    assert ensemble_predict.main([str(cfg_path), "--images", str(val_csv), "--image-root",
                                  str(cfg.data.image_root), "--ensemble", str(spec), "--out",
                                  str(out), "--quiet"]) == 0
    probs = np.load(out / f"predictions_{val_csv.stem}.npy")
    assert np.abs(probs - got[f"{cid}-ema-hflip"].val_probs).max() < 1e-5
    # The EMA sets come from the EMA weights' own best epoch: other numbers than the raw's.
    ema = got[f"{cid}-ema"]
    assert ema.manifest["best_epoch"] in (1, 2) and ema.manifest["weights_file"]
    assert not np.allclose(ema.val_probs, base.val_probs)
    assert len(ema.manifest["history"]) == 2 and "ema_val_acc" in ema.manifest["history"][0]
