"""Data preparation shared by every trial: validated CSVs, the folds, decoded-image caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import fs
from .cache import load_images
from .config import SweepConfig
from .folds import load_or_make_folds, write_folds
from .tables import read_test_csv, read_train_csv

__all__ = ["PreparedData", "Tables", "prepare_data", "read_tables", "resized"]


@dataclass(frozen=True)
class Tables:
    """The validated CSVs and the folds: what every trial of a sweep shares, read once."""

    train: pd.DataFrame  # class_name, image_path, target, fold (train.csv order)
    test: pd.DataFrame  # image_path (test.csv order)
    folds: pd.DataFrame  # image_path, target, fold: the split, written once images decode

    @property
    def num_classes(self) -> int:
        return int(self.train["target"].max()) + 1


@dataclass(frozen=True)
class PreparedData:
    """The tables and the decoded image caches of one image size."""

    train: pd.DataFrame
    test: pd.DataFrame
    num_classes: int
    train_images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    test_images: np.ndarray  # (N_test, S, S, 3) uint8, memory-mapped


def read_tables(cfg: SweepConfig) -> Tables:
    """Read and validate the CSVs (every image path checked) and read or make the folds."""
    d = cfg.data
    # min_per_class: a class with fewer rows than folds is named here, with the CSV's path.
    train = read_train_csv(d.train_csv, d.image_root, min_per_class=d.n_folds)
    test = read_test_csv(d.test_csv, d.test_image_root)
    folds = load_or_make_folds(train, d.folds_csv, d.n_folds, d.fold_seed, write=False,
                               source=d.train_csv)
    train = train.merge(folds[["image_path", "fold"]], on="image_path", how="left", validate="1:1")
    return Tables(train, test, folds)


def prepare_data(cfg: SweepConfig, img_size: int, progress: bool = False,
                 tables: Tables | None = None) -> PreparedData:
    """The tables (read here unless given: a sweep reads them once, in pre-flight, and hands
    them to every trial) and the image caches at `img_size`; a new split is written only
    once every image has decoded, so bad input leaves nothing."""
    d = cfg.data
    t = tables or read_tables(cfg)
    data = _with_images(cfg, t.train, t.test, t.num_classes, img_size, progress)
    if not fs.is_file(d.folds_csv):
        write_folds(t.folds, d.folds_csv)
    return data


def resized(cfg: SweepConfig, data: PreparedData, img_size: int,
            progress: bool = False) -> PreparedData:
    """The same tables with their images at another size (a `scale` view's), from its cache."""
    return _with_images(cfg, data.train, data.test, data.num_classes, img_size, progress)


def _with_images(cfg: SweepConfig, train: pd.DataFrame, test: pd.DataFrame, num_classes: int,
                 img_size: int, progress: bool) -> PreparedData:
    d = cfg.data
    train_images = load_images([Path(d.image_root) / p for p in train["image_path"]],
                               img_size, d.cache_dir, progress=progress)
    test_images = load_images([Path(d.test_image_root) / p for p in test["image_path"]],
                              img_size, d.cache_dir, progress=progress)
    return PreparedData(train, test, num_classes, train_images, test_images)
