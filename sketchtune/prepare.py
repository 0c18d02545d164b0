"""Data preparation shared by every trial: validated CSVs, the folds, decoded-image caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import storage
from .config import SweepConfig
from .data import load_images, read_test_csv, read_train_csv
from .folds import load_or_make_folds, write_folds

__all__ = ["PreparedData", "prepare_data"]


@dataclass(frozen=True)
class PreparedData:
    """Validated CSVs, the folds every trial reads, and decoded image caches."""

    train: pd.DataFrame  # class_name, image_path, target, fold (train.csv order)
    test: pd.DataFrame  # image_path (test.csv order)
    num_classes: int
    train_images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    test_images: np.ndarray  # (N_test, S, S, 3) uint8, memory-mapped


def prepare_data(cfg: SweepConfig, img_size: int, progress: bool = False) -> PreparedData:
    """Read and validate the CSVs, make or read the folds, and build the image caches."""
    d = cfg.data
    # min_per_class: a class with fewer rows than folds is named here, with the CSV's path.
    train = read_train_csv(d.train_csv, d.image_root, min_per_class=d.n_folds)
    test = read_test_csv(d.test_csv, d.test_image_root)
    # A new split is written only after every image has decoded: bad input leaves nothing.
    folds = load_or_make_folds(train, d.folds_csv, d.n_folds, d.fold_seed, write=False,
                               source=d.train_csv)
    train = train.merge(folds[["image_path", "fold"]], on="image_path", how="left", validate="1:1")
    num_classes = int(train["target"].max()) + 1
    root = Path(d.image_root)
    train_images = load_images([root / p for p in train["image_path"]], img_size, d.cache_dir,
                               progress=progress)
    test_root = Path(d.test_image_root)
    test_images = load_images([test_root / p for p in test["image_path"]], img_size, d.cache_dir,
                              progress=progress)
    if not storage.is_file(d.folds_csv):
        write_folds(folds, d.folds_csv)
    return PreparedData(train, test, num_classes, train_images, test_images)
