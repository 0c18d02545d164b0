"""`sweep --dry-run`: the plan's counts and sizes are the config's and the data's, and nothing
is written."""

from __future__ import annotations

import os
from pathlib import Path

from sketchtune import sweep
from sketchtune.config import ModelConfig
from sketchtune.dryrun import data_shape, describe_plan, model_params
from sketchtune.model import build_model

# conftest's DEMO data: 5 classes x 40 train and x 6 test images.
N_TRAIN, N_TEST, C = 200, 30, 5


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for r in roots for p in sorted(r.rglob("*"))}


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_cfg, demo_dir, tmp_path, capsys,
                                                    monkeypatch):
    cfg, path = tiny_cfg()
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path, demo_dir.parent)
    assert sweep.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert tree(tmp_path, demo_dir.parent) == before  # no folds, cache, mlflow.db, sweeps/
    assert not (tmp_path / "mlflow.db").exists() and not cfg.sweep_dir.exists()
    import ray

    assert not ray.is_initialized()
    assert f"data: {N_TRAIN} train rows, {C} classes, {N_TEST} test rows" in out
    # No search: the base candidate on every fold.
    assert "stage search" not in out and "stage cv: 5 trial(s): 1 candidate(s) x 5 folds" in out
    assert "epochs per trial: at most 2; all trials: 5" in out
    assert "resources per trial: 1 CPU, 0 GPU" in out
    # (N_TRAIN + N_TEST) images x 32 x 32 x 3 bytes; (N_TRAIN / 5 + N_TEST) x C x 4 bytes.
    assert "image cache at 32 px: (train + test) x 32 x 32 x 3 B = 706.6 KB" in out
    assert "probabilities (n_val + n_test) x C x 4 B = 1.4 KB" in out


def test_dry_run_counts_search_and_cv_trials(tiny_cfg, capsys):
    space = {"model.name": {"type": "choice", "values": ["test_convnext", "test_resnet"]},
             "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
             "epochs": {"type": "choice", "values": [2, 7]}}
    cfg, _ = tiny_cfg(**{"search.enabled": True, "search.space": space, "search.num_samples": 3,
                         "search.top_k_per_backbone": 2, "search.grace_period": 1,
                         "candidates": [{"optim.lr": 1e-3}]})
    text = describe_plan(cfg, "c.yaml")
    assert "stage search: 3 trial(s) on fold 0, up to 7 epoch(s) each" in text
    # top 2 per backbone x 2 backbones + 1 fixed candidate, on 5 folds.
    assert "stage cv: at most 25 trial(s)" in text
    assert "all trials: 28" in text
    assert "model test_convnext" in text and "model test_resnet" in text


def test_dry_run_counts_folds_already_in_the_store(tiny_cfg):
    from sketchtune.planner import cv_candidates

    cfg, _ = tiny_cfg()
    cid = cv_candidates(cfg, None, [])[0].id
    d = cfg.sweep_dir / "candidates" / cid
    d.mkdir(parents=True)
    for k in (0, 3):  # the two files PredictionStore.has_fold looks for
        (d / f"fold{k}.npz").write_bytes(b"")
        (d / f"fold{k}.json").write_text("{}")
    text = describe_plan(cfg)
    assert "stage cv: 3 trial(s): 1 candidate(s) x 5 folds, 2 fold(s) already in the store" \
        in text and "all trials: 3" in text


def test_model_params_on_meta_equal_the_trainers_model():
    # test_vit's position embeddings depend on img_size: the count must follow it.
    for name in ("test_convnext", "test_vit"):
        real = build_model(ModelConfig(name=name), C, img_size=64)
        assert model_params(name, C, 64) == sum(p.numel() for p in real.parameters())


def test_data_shape_unknown_without_csvs(tiny_cfg, tmp_path):
    cfg, _ = tiny_cfg(**{"data.train_csv": str(tmp_path / "no" / "train.csv"),
                         "data.test_csv": str(tmp_path / "no" / "test.csv")})
    shape = data_shape(cfg)
    assert (shape.n_train, shape.n_test, shape.classes) == (None, None, None)
    assert "train.csv not found" in shape.note
    text = describe_plan(cfg)
    assert "data: unknown train rows, unknown classes, unknown test rows" in text
    assert "prediction store per fold: unknown" in text
    assert os.path.isdir(tmp_path / "no") is False
