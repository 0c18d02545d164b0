"""Stage pseudo: fold k's pseudo-labelled training inputs never depend on fold k's labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ensemble_search import optimize
from sketchtune.config import PseudoLabels, load_config
from sketchtune.errors import StoreError
from sketchtune.pseudo import ensemble_json, fold_inputs, read_fold_weights
from sketchtune.store import PredictionStore
from tests.conftest import tiny_config_dict, write_config
from tests.ensemble_fixtures import make_sweep

SPEC = PseudoLabels(source="0" * 16, threshold=0.3, labels="hard", max_share=0.5)


def _relabel(sw, fold: int) -> None:
    """Give fold `fold`'s validation rows other labels everywhere the labels live: train.csv,
    the folds file and every stored fold file's val_targets (their probabilities unchanged:
    the fold's models are the same models)."""
    rows = np.flatnonzero(sw.folds == fold)
    c = sw.probs.shape[2]
    new = sw.targets.copy()
    new[rows] = (new[rows] + 1) % c
    data = sw.folds_csv.parent
    pd.DataFrame({"class_name": [f"c{t}" for t in new], "image_path": sw.keys,
                  "target": new}).to_csv(data / "train.csv", index=False)
    pd.DataFrame({"image_path": sw.keys, "target": new, "fold": sw.folds}).to_csv(
        sw.folds_csv, index=False)
    for cid in sw.ids:
        f = sw.store.read_fold(cid, fold)
        sw.store.write_fold(cid, fold, val_keys=f.val_keys, val_targets=new[rows],
                            val_probs=f.val_probs, test_keys=f.test_keys,
                            test_probs=f.test_probs, manifest=f.manifest)
    sw.targets = new


def _inputs(sw, fold: int):
    assert optimize.main([str(sw.config), "--quiet"]) == 0
    fw = read_fold_weights(ensemble_json(load_config(sw.config)))
    n_train = int((sw.folds != fold).sum())
    return fw, fold_inputs(sw.store, fw, fold, sw.test_keys, SPEC, n_train, seed=42)


def test_pseudo_fold_inputs_do_not_change_when_the_folds_own_labels_do(tmp_path):
    sw = make_sweep(tmp_path, skills=(2.0, 1.5, 1.0, 0.5), n=120, c=4, n_test=40)
    fw, (rows, labels) = _inputs(sw, fold=1)
    assert len(rows) > 0  # the check below compares something
    _relabel(sw, fold=1)
    fw2, (rows2, labels2) = _inputs(sw, fold=1)
    assert np.array_equal(fw.folds[1][0], fw2.folds[1][0])
    assert fw.folds[1][1] == fw2.folds[1][1]
    assert np.array_equal(rows, rows2) and np.array_equal(labels, labels2)
    # The check can fail: the other folds' weights were fitted on fold 1's rows, and moved.
    assert any(not np.array_equal(fw.folds[k][0], fw2.folds[k][0]) for k in (0, 2))


def test_pseudo_fold_inputs_hard_soft_threshold_and_share(tmp_path):
    sw = make_sweep(tmp_path, skills=(2.0, 1.0), n=60, c=4, n_test=40)
    assert optimize.main([str(sw.config), "--quiet"]) == 0
    fw = read_fold_weights(ensemble_json(load_config(sw.config)))
    every = SPEC.model_copy(update={"threshold": 0.0, "max_share": 0.9})
    rows, hard = fold_inputs(sw.store, fw, 0, sw.test_keys, every, 1000, seed=1)
    assert np.array_equal(rows, np.arange(40)) and hard.dtype == np.int64
    soft = every.model_copy(update={"labels": "soft"})
    _, probs = fold_inputs(sw.store, fw, 0, sw.test_keys, soft, 1000, seed=1)
    assert probs.shape == (40, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(probs.argmax(axis=1), hard)
    confident = every.model_copy(update={"threshold": 0.6})
    rows6, _ = fold_inputs(sw.store, fw, 0, sw.test_keys, confident, 1000, seed=1)
    assert np.array_equal(rows6, np.flatnonzero(probs.max(axis=1) >= 0.6))
    # max_share 0.2 beside 40 labelled rows: at most 10 pseudo-labelled images, a fixed draw
    capped = every.model_copy(update={"max_share": 0.2})
    a, _ = fold_inputs(sw.store, fw, 0, sw.test_keys, capped, 40, seed=1)
    b, _ = fold_inputs(sw.store, fw, 0, sw.test_keys, capped, 40, seed=1)
    assert len(a) == 10 and np.array_equal(a, b) and set(a) <= set(range(40))


def test_pseudo_read_fold_weights_refuses_a_file_without_them_in_one_line(tmp_path):
    path = tmp_path / "ensemble.json"
    with pytest.raises(StoreError, match=r"ensemble\.json: not found; run python -m ensemble"):
        read_fold_weights(path)
    path.write_text(json.dumps({"format": 1, "candidates": []}))
    with pytest.raises(StoreError, match=r"no valid fold_weights section"):
        read_fold_weights(path)
    path.write_text(json.dumps({"fold_weights": {"method": "greedy", "candidates": ["a"],
                                                 "folds": [{"fold": 0, "weights": [-1],
                                                            "temperature": 1}]}}))
    with pytest.raises(StoreError, match=r"no valid fold_weights section"):
        read_fold_weights(path)


@pytest.mark.slow
def test_pseudo_stage_trains_the_top_candidates_on_every_fold_once(demo_dir, tmp_path,
                                                                    mlflow_db):
    from sketchtune.sweep import main

    cfg = tiny_config_dict(demo_dir, tmp_path, **{
        "data.n_folds": 3, "train.epochs": 1,
        "candidates": [{"model.name": "test_resnet"}, {"model.name": "test_convnext"}],
        "pseudo": {"top": 1, "threshold": 0.0, "max_share": 0.3}})
    path = write_config(tmp_path / "sweep.yaml", cfg)
    # Without an ensemble.json the stage says what to run first and trains nothing more.
    assert main([str(path), "--quiet", "--set", "pseudo.enabled=true"]) == 0
    store = PredictionStore(tmp_path / "sweeps" / "tiny")
    before = set(store.candidates())
    assert len(before) == 2
    assert optimize.main([str(path), "--quiet"]) == 0
    fw = read_fold_weights(tmp_path / "sweeps" / "tiny" / "ensemble" / "ensemble.json")
    assert main([str(path), "--quiet", "--set", "pseudo.enabled=true"]) == 0
    (new,) = set(store.candidates()) - before
    base = fw.ranked()[0]
    for k in range(3):
        m = store.read_manifest(new, k)
        assert m["stage"] == "pseudo" and m["config"]["pseudo"]["source"] == fw.digest
        # 0.3 / 0.7 of the fold's labelled rows at most; the demo's test set is smaller
        assert 0 < m["pseudo_images"] <= int(0.3 / 0.7 * len(store.read_fold(base, k).val_keys)
                                             * 2)
        assert m["config"] == {**store.read_manifest(base, k)["config"],
                               "pseudo": m["config"]["pseudo"]}
    # The ensemble now weighs the pseudo candidate too; the stage then has nothing to do.
    assert optimize.main([str(path), "--quiet"]) == 0
    assert main([str(path), "--quiet", "--set", "pseudo.enabled=true"]) == 0
    assert set(store.candidates()) == before | {new}
