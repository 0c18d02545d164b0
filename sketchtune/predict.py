"""Predict new images with a candidate's saved fold weights (the mean over its fold models)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from .config import SweepConfig, TrainConfig
from .data import SketchDataset, load_images, read_test_csv
from .engine import predict, select_device
from .model import build_model
from .store import PredictionStore, StoreError
from .transforms import build_eval_transform

__all__ = ["predict_csv"]

_log = logging.getLogger(__name__)


def predict_csv(
    cfg: SweepConfig, candidate_id: str, csv_path: Path, *, image_root: Path | None = None,
    device: torch.device | None = None, progress: bool = False,
) -> np.ndarray:
    """Class probabilities (N, C) float32 for the `image_path` rows of `csv_path`.

    Each fold's best weights (safetensors, never a pickle) predict every row; the result is
    their mean, as for the stored test predictions. Image paths are relative to
    `image_root` (default: the CSV's folder) and may not leave it.
    """
    store = PredictionStore(cfg.sweep_dir)
    folds = store.folds(candidate_id)
    if not folds:
        raise StoreError(f"{store.candidate_dir(candidate_id)}: candidate {candidate_id} has no "
                         "finished fold")
    manifests = [store.read_manifest(candidate_id, k) for k in folds]
    missing = [k for k, m in zip(folds, manifests, strict=True) if not m.get("weights_file")]
    if missing:
        raise StoreError(f"{store.candidate_dir(candidate_id)}: fold(s) {missing} saved no "
                         "weights (save_weights was false); retrain them to predict new images")
    train_cfg = TrainConfig.model_validate(manifests[0]["config"])
    root = Path(image_root) if image_root is not None else Path(csv_path).parent
    rows = read_test_csv(Path(csv_path), root)
    images = load_images([root / p for p in rows["image_path"]], train_cfg.img_size,
                         cfg.data.cache_dir, progress=progress)
    device = device or select_device()
    loader = DataLoader(SketchDataset(images, None, build_eval_transform(train_cfg.img_size)),
                        batch_size=train_cfg.batch_size, shuffle=False,
                        pin_memory=device.type == "cuda")
    total = None
    for k, m in zip(folds, manifests, strict=True):
        model = build_model(train_cfg.model.model_copy(update={"pretrained": False}),
                            int(m["num_classes"]), train_cfg.img_size)
        model.load_state_dict(load_file(store.candidate_dir(candidate_id) / m["weights_file"]))
        model.to(device)
        p = predict(model, loader, device, train_cfg.tta_hflip, progress, f"fold {k}")
        total = p if total is None else total + p
    return (total / len(folds)).astype(np.float32)
