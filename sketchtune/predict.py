"""Predict new images with a candidate's saved fold weights (the mean over its fold models)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from . import fs
from .cache import load_images
from .config import SweepConfig, TrainConfig, own_view, view_img_size
from .engine import predict, select_device
from .errors import DataError, StoreError, first_line
from .fs import Location
from .images import SketchDataset
from .model import build_model
from .store import PredictionStore
from .transforms import build_eval_transform

__all__ = ["predict_csv", "read_image_list"]

_SHOW = 3  # how many offending rows a message lists

_log = logging.getLogger(__name__)


def read_image_list(csv_path: Path, image_root: Path) -> list[Path]:
    """The files named by the `image_path` column of `csv_path`, in row order.

    A relative path is read under `image_root`; an absolute one as it is (new images are
    the user's own files, so unlike a training CSV they are not confined to a root).
    DataError naming the CSV for a missing column, an empty cell, or missing or empty files.
    """
    csv_path, root = Path(csv_path), Path(image_root)
    try:
        # utf-8-sig: a spreadsheet's byte-order mark would glue onto the column name.
        df = pd.read_csv(csv_path, encoding="utf-8-sig", dtype=str, keep_default_na=False,
                         index_col=False)
    except FileNotFoundError:
        raise DataError(f"{csv_path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv_path}: empty file") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DataError(f"{csv_path}: not a readable UTF-8 CSV ({first_line(err)})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "image_path" not in df.columns:
        raise DataError(f"{csv_path}: missing column 'image_path' (found: "
                        f"{', '.join(map(repr, df.columns))})")
    if len(df) == 0:
        raise DataError(f"{csv_path}: no rows")
    rels = df["image_path"].tolist()
    if blank := [i + 2 for i, r in enumerate(rels) if not r.strip()]:
        raise DataError(f"{csv_path}: empty 'image_path' in {len(blank)} row(s) (first: line "
                        f"{blank[0]})")
    paths = [Path(r) if Path(r).is_absolute() else root / r for r in rels]
    missing = [r for r, q in zip(rels, paths, strict=True) if not q.is_file()]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:_SHOW])
        raise DataError(f"{csv_path}: {len(missing)} image(s) not found (first: {shown}); "
                        f"relative paths are read under {root} (--image-root)")
    empty = [r for r, q in zip(rels, paths, strict=True) if q.stat().st_size == 0]
    if empty:
        shown = ", ".join(repr(m) for m in empty[:_SHOW])
        raise DataError(f"{csv_path}: {len(empty)} empty (0-byte) image(s) (first: {shown})")
    return paths


def _header_shapes(data: bytes) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header (an 8-byte little-endian length,
    then that much JSON), without loading a tensor; SafetensorError-like ValueError if bad."""
    if len(data) < 8:
        raise ValueError("file too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header longer than the file (cut short?)")
    header = json.loads(data[8:8 + n])
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _load_weights(path: Location) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (never a pickle): from the file, or a cloud object's
    bytes."""
    if isinstance(path, Path):
        return load_file(path)
    return st_load(fs.read_bytes(path))


def _check_weights_file(path: Location, want: dict[str, tuple[int, ...]]) -> None:
    """StoreError naming `path` unless it is a safetensors file holding exactly the tensors
    `want` (name -> shape, the model's state_dict); reads the header only (a cloud object is
    fetched, its header parsed, the bytes dropped)."""
    try:
        if isinstance(path, Path):
            with safe_open(path, framework="pt") as f:
                have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        else:
            try:
                have = _header_shapes(fs.read_bytes(path))
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise SafetensorError(str(err)) from None
    except FileNotFoundError:
        raise StoreError(f"{path}: weights file not found; retrain the fold to predict new "
                         "images") from None
    except (SafetensorError, OSError) as err:  # cut short, not safetensors, unreadable
        raise StoreError(f"{path}: unreadable weights file ({first_line(err, 100)}); retrain "
                         "the fold to predict new images") from None
    if have != want:
        name = sorted(have.keys() ^ want.keys()) or [k for k in want if have[k] != want[k]]
        raise StoreError(f"{path}: these weights do not fit the fold's model (first difference: "
                         f"tensor {name[0]!r}); the file was replaced: retrain the fold")


def predict_csv(
    cfg: SweepConfig, candidate_id: str, csv_path: Path, *, image_root: Path | None = None,
    device: torch.device | None = None, progress: bool = False,
) -> np.ndarray:
    """Class probabilities (N, C) float32 for the `image_path` rows of `csv_path`.

    Each fold's best weights (safetensors, never a pickle) predict every row; the result is
    their mean, as for the stored test predictions. Relative image paths are read under
    `image_root` (default: the CSV's folder), absolute ones as they are (`read_image_list`).
    A view candidate (`<id>-hflip`, `<id>-ema-scale`, ...) predicts with the weights its
    manifest names (`weights_candidate`: the candidate's, or its EMA weights') in its view.
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
    paths = read_image_list(Path(csv_path), root)  # the cheap check first: do they exist
    weights = [store.candidate_dir(m.get("weights_candidate") or candidate_id) / m["weights_file"]
               for m in manifests]
    model = build_model(train_cfg.model.model_copy(update={"pretrained": False}),
                        int(manifests[0]["num_classes"]), train_cfg.img_size)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for w in weights:  # headers only, before the images are decoded and cached
        _check_weights_file(w, want)
    view = manifests[0].get("view") or own_view(train_cfg)  # folds before views: its own
    size = view_img_size(view, train_cfg.img_size)
    images = load_images(paths, size, cfg.data.cache_dir, progress=progress)
    device = device or select_device()
    loader = DataLoader(SketchDataset(images, None, build_eval_transform(size)),
                        batch_size=train_cfg.batch_size, shuffle=False,
                        pin_memory=device.type == "cuda")
    total = None
    for k, w in zip(folds, weights, strict=True):
        model.load_state_dict(_load_weights(w))  # every tensor checked by _check_weights_file
        model.to(device)
        p = predict(model, loader, device, view == "hflip_avg", progress, f"fold {k}",
                    mirror=view == "hflip")
        total = p if total is None else total + p
    return (total / len(folds)).astype(np.float32)
