"""`predict --images`: the image list (relative under a root, absolute as is), the weights."""

from __future__ import annotations

import pandas as pd
import pytest

from sketchtune.errors import DataError
from sketchtune.predict import read_image_list


def _csv(tmp_path, paths):
    csv = tmp_path / "lists" / "new.csv"
    csv.parent.mkdir(exist_ok=True)
    pd.DataFrame({"image_path": paths}).to_csv(csv, index=False)
    return csv


def test_read_image_list_relative_under_root_absolute_as_is(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"png")
    elsewhere = tmp_path / "mine" / "y.png"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"png")
    csv = _csv(tmp_path, ["a/x.png", str(elsewhere)])
    assert read_image_list(csv, root) == [root / "a" / "x.png", elsewhere]


def test_read_image_list_missing_image_names_the_root_and_the_option(tmp_path):
    csv = _csv(tmp_path, ["gone.png", "also/gone.png"])
    with pytest.raises(DataError) as e:
        read_image_list(csv, csv.parent)
    msg = str(e.value)
    assert msg.startswith(f"{csv}: 2 image(s) not found (first: 'gone.png', 'also/gone.png')")
    assert f"relative paths are read under {csv.parent} (--image-root)" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(("text", "want"), [
    (b"", "empty file"), (b"path\nx.png\n", "missing column 'image_path'"),
    (b"image_path\n", "no rows"), (b"image_path,n\n ,1\n", "empty 'image_path' in 1 row"),
])
def test_read_image_list_bad_csv_is_one_data_error(tmp_path, text, want):
    csv = tmp_path / "new.csv"
    csv.write_bytes(text)
    with pytest.raises(DataError, match=want):
        read_image_list(csv, tmp_path)


def _candidate_with_weights(tmp_path, n_folds: int = 2):
    """A store with one test_resnet candidate whose folds saved real weights, a CSV of two
    sketches, and the config; (cfg, candidate id, csv)."""
    import cv2
    import numpy as np
    from safetensors.torch import save_file

    from sketchtune.config import SweepConfig, TrainConfig
    from sketchtune.model import build_model
    from sketchtune.store import PredictionStore
    from tests.data_fixtures import sketch

    train = TrainConfig.model_validate({"model": {"name": "test_resnet", "pretrained": False},
                                        "img_size": 32})
    cfg = SweepConfig.model_validate({"name": "w", "storage_path": str(tmp_path / "sweeps"),
                                      "data": {"cache_dir": str(tmp_path / "cache")},
                                      "train": train.model_dump(mode="json")})
    store, p = PredictionStore(cfg.sweep_dir), np.full((1, 3), 1 / 3, np.float32)
    for k in range(n_folds):
        d = store.candidate_dir("cand")
        d.mkdir(parents=True, exist_ok=True)
        save_file(build_model(train.model, 3, 32).state_dict(), d / f"fold{k}.safetensors")
        store.write_fold("cand", k, val_keys=[f"v{k}.png"], val_targets=[0], val_probs=p,
                         test_keys=["t.png"], test_probs=p,
                         manifest={"n_folds": n_folds, "config": train.model_dump(mode="json"),
                                   "weights_file": f"fold{k}.safetensors"})
    for i in range(2):
        (tmp_path / "lists").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "lists" / f"{i}.png"), sketch(i, 32))
    return cfg, "cand", _csv(tmp_path, ["0.png", "1.png"])


def _other_arch(path):
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, path)


def _other_class_count(path):
    from safetensors.torch import load_file, save_file

    sd = load_file(path)
    sd["fc.weight"] = sd["fc.weight"][:2].clone()
    save_file(sd, path)


@pytest.mark.parametrize(("damage", "want"), [
    (lambda p: p.unlink(), "weights file not found"),
    (lambda p: p.write_bytes(b"\x10\0\0\0\0\0\0\0{}"), "unreadable weights file"),
    (_other_arch, "do not fit the fold's model"),
    (_other_class_count, "first difference: tensor 'fc.weight'"),
], ids=["deleted", "truncated", "other-architecture", "other-class-count"])
def test_predict_csv_refuses_damaged_weights_before_decoding_images(tmp_path, damage, want):
    """A fold's weights deleted, cut short or replaced: one StoreError naming the file, and the
    images are not decoded (no cache written) before it is found."""
    from sketchtune.errors import StoreError
    from sketchtune.predict import predict_csv

    cfg, cid, csv = _candidate_with_weights(tmp_path)
    assert predict_csv(cfg, cid, csv).shape == (2, 3)  # the undamaged set predicts
    for f in (tmp_path / "cache").glob("*"):
        f.unlink()
    weights = cfg.sweep_dir / "candidates" / cid / "fold1.safetensors"
    damage(weights)
    with pytest.raises(StoreError, match=want) as err:
        predict_csv(cfg, cid, csv)
    assert str(err.value).startswith(f"{weights}: ") and "\n" not in str(err.value)
    assert not list((tmp_path / "cache").glob("*"))
