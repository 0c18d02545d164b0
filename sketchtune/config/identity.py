"""What a candidate is called: the id of a training config, and the ids of the prediction sets
one training of it stores (its views, its EMA weights)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .train import TrainConfig

__all__ = ["SCALE", "PredictionSet", "candidate_id", "own_view", "prediction_sets",
           "view_img_size"]

# Keys added after ids were first defined (fb78821). Each enters the hash only when it differs
# from its default, so every config that does not use it keeps the id it had, and so do the
# stores and submissions built on those ids.
_LATER = ("mixup", "ema", "accum_steps", "optim.layer_decay", "pseudo")
# Keys that change no trained weight: never in the hash (a view is a prediction set of the same
# model; compiling runs the same model faster).
_NOT_MODEL = ("views", "compile")
# The `scale` view's image size factor: a model trained on random-resized crops sees objects
# larger at train time than at test time, and testing ~15 % larger evens that out (FixRes,
# Touvron et al. 2019).
SCALE = 1.15


def _pop(d: dict[str, Any], dotted: str) -> Any:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d[p]
    return d.pop(last)


def _get(d: dict[str, Any], dotted: str) -> Any:
    for p in dotted.split("."):
        d = d[p]
    return d


def candidate_id(train: TrainConfig) -> str:
    """A short stable hash of everything that changes the model.

    The weights file enters by name, not path, so a copy on another machine is the same
    candidate. Keys of `_LATER` enter only when they differ from their default.
    """
    d = train.model_dump(mode="json")
    if d["model"]["weights_file"]:
        d["model"]["weights_file"] = Path(d["model"]["weights_file"]).name
    default = _DEFAULT.model_dump(mode="json")
    for key in _NOT_MODEL:
        _pop(d, key)
    for key in _LATER:
        if _get(d, key) == _get(default, key):
            _pop(d, key)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


_DEFAULT = TrainConfig()


@dataclass(frozen=True)
class PredictionSet:
    """One set of predictions a trial stores: `view` of the `weights` of the config `base`."""

    id: str  # the candidate it is stored as: base, base-<view>, base-ema, base-ema-<view>
    base: str  # the training config's candidate id
    weights: str  # "raw" (the trained weights) or "ema" (their moving average)
    view: str  # one of config.train.VIEWS


def own_view(train: TrainConfig) -> str:
    """The view of the candidate's own predictions, the one its best epoch is chosen by."""
    return "hflip_avg" if train.tta_hflip else "plain"


def prediction_sets(train: TrainConfig) -> list[PredictionSet]:
    """Every prediction set one training of `train` stores, the candidate itself first.

    The raw weights' sets, then (with `ema.enabled`) the EMA weights': each in the candidate's
    own view, then every other view of `train.views` in the listed order.
    """
    base, own = candidate_id(train), own_view(train)
    views = [own, *(v for v in train.views if v != own)]
    out = []
    for weights in ("raw", "ema") if train.ema.enabled else ("raw",):
        for view in views:
            parts = [base, *(["ema"] if weights == "ema" else []), *([view] if view != own else [])]
            out.append(PredictionSet("-".join(parts), base, weights, view))
    return out


def view_img_size(view: str, img_size: int) -> int:
    """The image side a view predicts at: img_size, or for `scale` img_size x SCALE rounded to
    a multiple of 8 (and at least 8 more)."""
    if view != "scale":
        return img_size
    return max(img_size + 8, 8 * round(img_size * SCALE / 8))
