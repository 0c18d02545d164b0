"""One candidate's training config (`TrainConfig`: model, optimizer, schedule, loss, augmentation)
and its id, the hash of everything that changes the trained model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from .fields import SEED, Bool, Float, Int, Strict

__all__ = ["AugConfig", "LossConfig", "ModelConfig", "OptimConfig", "SchedConfig", "TrainConfig",
           "candidate_id"]

# Every field carries its description and the reason for its default; docs/config.md is
# generated from them (`python docs/configdoc.py --write`), never written by hand.


class ModelConfig(Strict):
    """The timm backbone, built with a classifier for the data's classes."""

    name: str = Field(
        "test_resnet.r160_in1k",
        description="timm model name, `architecture.tag` (checked against timm before any "
        "trial). Default: a tiny timm test model that trains on a CPU in seconds (the demo); "
        "real configs name a real backbone.",
    )
    pretrained: Bool = Field(
        False,
        description="Start from pretrained weights (the Hugging Face hub, or `weights_file`). "
        "Off so that nothing is downloaded unless asked (offline machines, tests); "
        "fine-tuning a real backbone wants it on.",
    )
    weights_file: Path | None = Field(
        None,
        description="A local .safetensors (or .pth/.bin, read with `weights_only=True`) to "
        "load instead of the hub when `pretrained` is on, for machines that cannot reach the "
        "hub. It enters the candidate hash by file name only, so a copy elsewhere is the same "
        "candidate. null: the hub.",
    )
    drop_rate: Float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Dropout before the classifier (timm's `drop_rate`). 0: timm's default; "
        "a value a search can sample.",
    )
    drop_path_rate: Float | None = Field(
        None, ge=0.0, lt=1.0,
        description="Stochastic depth (timm's `drop_path_rate`). null leaves the model's own "
        "timm default, which the pretrained weights were trained with.",
    )


class OptimConfig(Strict):
    """The optimizer, from `timm.optim.create_optimizer_v2`."""

    name: str = Field(
        "adamw",
        description="Any `timm.optim.create_optimizer_v2` name (`timm.optim.list_optimizers()`; "
        "checked before any trial). AdamW: the usual optimizer for fine-tuning timm backbones; "
        "timm skips weight decay on biases and norm weights.",
    )
    lr: Float = Field(
        1e-3, gt=0.0,
        description="Peak learning rate, reached after the warm-up. 1e-3: torch's AdamW "
        "default, a fair start for the demo's small models; a search usually samples it "
        "(`search.space`).",
    )
    weight_decay: Float = Field(
        0.05, ge=0.0,
        description="Decoupled weight decay. 0.05: the usual AdamW value for fine-tuning "
        "ConvNeXt/ViT-style backbones.",
    )
    momentum: Float = Field(
        0.9, ge=0.0, lt=1.0,
        description="Momentum of SGD-type optimizers (sgd, momentum, ...); AdamW ignores it. "
        "0.9: the usual SGD value.",
    )


class SchedConfig(Strict):
    """The learning-rate schedule, from `timm.scheduler.create_scheduler_v2`, stepped per update."""

    name: Literal["cosine", "step", "none"] = Field(
        "cosine",
        description="`cosine` decays to `min_lr` over the epochs; `step` divides by 10 every "
        "epochs/3 epochs; `none` keeps `lr`. Cosine: no step sizes to tune, and it ends near "
        "`min_lr`. Stepped per update, so the warm-up is smooth even on small data.",
    )
    warmup_epochs: Int = Field(
        1, ge=0,
        description="Epochs of linear warm-up from `warmup_lr` to `lr` (at most epochs - 1). "
        "One epoch keeps a new classifier's large early gradients from wrecking pretrained "
        "features.",
    )
    warmup_lr: Float = Field(
        1e-6, ge=0.0,
        description="Learning rate at the first update of the warm-up. Near zero, so the "
        "warm-up starts gently.",
    )
    min_lr: Float = Field(
        1e-6, ge=0.0,
        description="Floor of the cosine decay. Near zero, so the last epochs fine-tune; "
        "above zero so they still learn.",
    )


class LossConfig(Strict):
    """The training loss: focal loss (the reference pipeline's) or plain cross entropy."""

    name: Literal["focal", "ce"] = Field(
        "focal",
        description="`focal`: focal loss, alpha * (1 - p) ** gamma * CE; `ce`: cross entropy "
        "(alpha and gamma unused). Focal: the reference pipeline's loss.",
    )
    alpha: Float = Field(
        0.5, gt=0.0,
        description="Focal loss scale. 0.5: the reference pipeline's FocalLoss(alpha=0.5, "
        "gamma=2).",
    )
    gamma: Float = Field(
        2.0, ge=0.0,
        description="Focal loss focusing power (0 with alpha 1 is cross entropy). 2: the "
        "reference pipeline's and Lin et al. (2017)'s value.",
    )
    label_smoothing: Float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Label smoothing of the cross-entropy term (both losses). 0: off, so "
        "the focal loss is the plain formula above; a value a search can sample.",
    )


class AugConfig(Strict):
    """The reference augmentation pipeline; `strength` scales every probability and magnitude.

    The defaults are the reference pipeline's values (albumentations 1.x arguments, translated
    to 2.x): flip, rotate, coarse dropout, grid distortion, then resize, unsharp mask and
    brightness.
    """

    strength: Float = Field(
        1.0, ge=0.0, le=2.0,
        description="Multiplies every probability (capped at 1) and magnitude below: one "
        "knob a search can sample. 1: the reference pipeline; 0: no augmentation at all "
        "(exactly the eval transform).",
    )
    hflip_p: Float = Field(0.5, ge=0.0, le=1.0, description="Probability of a horizontal "
                           "flip. 0.5: the reference value; a mirrored sketch is the same class.")
    rotate_limit: Float = Field(30.0, ge=0.0, le=180.0, description="Largest rotation, in "
                                "degrees either way. 30: the reference value.")
    rotate_p: Float = Field(0.5, ge=0.0, le=1.0,
                            description="Probability of a rotation. 0.5: the reference value.")
    dropout_p: Float = Field(0.5, ge=0.0, le=1.0, description="Probability of coarse dropout "
                             "(holes filled with `fill`). 0.5: the reference value.")
    dropout_max_holes: Int = Field(8, ge=1, description="Number of dropout holes. 8: the "
                                   "reference CoarseDropout(max_holes=8), which meant exactly 8.")
    dropout_size: Int = Field(16, ge=1, description="Hole side in px at img_size 224, scaled "
                              "with img_size. 16: the reference CoarseDropout(max_height=16, "
                              "max_width=16), set for 224 px.")
    grid_distortion_p: Float = Field(0.5, ge=0.0, le=1.0, description="Probability of a grid "
                                     "distortion. 0.5: the reference value.")
    grid_distort_limit: tuple[Float, Float] = Field(
        (-0.03, 0.05),
        description="Range of the grid distortion (albumentations' `distort_limit`). "
        "(-0.03, 0.05): the reference value; small, so strokes bend but stay readable.",
    )
    unsharp_p: Float = Field(0.5, ge=0.0, le=1.0, description="Probability of the unsharp mask. "
                             "0.5: the reference value.")
    unsharp_kernel: Int = Field(7, ge=3, description="Gaussian kernel side of the unsharp mask, "
                                "odd. 7: the reference value.")
    unsharp_sigma: Float = Field(1.5, gt=0.0, description="Gaussian sigma of the unsharp mask. "
                                 "1.5: the reference value.")
    unsharp_amount: Float = Field(1.5, ge=0.0, description="Sharpening amount: image + amount * "
                                  "(image - blurred). 1.5: the reference value (stronger than "
                                  "albumentations' UnsharpMask allows, hence its own transform).")
    unsharp_threshold: Float = Field(0.0, ge=0.0, description="Sharpen only where |image - "
                                     "blurred| exceeds this. 0: everywhere, the reference value.")
    brightness: Float = Field(-0.2, ge=-1.0, le=1.0, description="Brightness shift, a fraction "
                              "of the range; always this shift, not a random one either way. "
                              "-0.2 (darker): the reference value.")
    brightness_p: Float = Field(0.5, ge=0.0, le=1.0, description="Probability of the brightness "
                                "shift. 0.5: the reference value.")
    fill: Int = Field(
        255, ge=0, le=255,
        description="Grey level that pads rotations and distortions and fills dropout holes. "
        "255 (white): sketches are dark strokes on white, and a black patch would be a stroke "
        "the model could learn from.",
    )

    @field_validator("unsharp_kernel")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd but got {v}")
        return v


class TrainConfig(Strict):
    """One candidate: everything that changes the trained model (the fold excepted).

    Its fields make up the candidate id (a hash), and `search.space` and `candidates` override
    them by dotted key (`optim.lr`, `model.name`).
    """

    model: ModelConfig = Field(ModelConfig(), description="The backbone.")
    img_size: Int = Field(
        64, ge=16, le=1024,
        description="Side of the square images the model sees, in px (images are decoded and "
        "resized once into a cache per size). 64: the demo's sketches; the competition "
        "configs use 224.",
    )
    epochs: Int = Field(
        3, ge=1,
        description="Epochs per fold (also ASHA's max_t in the search). 3: enough for the demo "
        "to learn on a CPU in seconds per trial.",
    )
    batch_size: Int = Field(
        32, ge=1,
        description="Images per update. 32: the shipped configs' value, small enough for the "
        "demo on a CPU.",
    )
    optim: OptimConfig = Field(OptimConfig(), description="The optimizer.")
    sched: SchedConfig = Field(SchedConfig(), description="The learning-rate schedule.")
    loss: LossConfig = Field(LossConfig(), description="The loss.")
    aug: AugConfig = Field(AugConfig(), description="The training augmentation.")
    patience: Int = Field(
        5, ge=1,
        description="Stop a fold after this many epochs without a better val_acc; the best "
        "epoch's weights are kept either way. 5: tolerant of the noise of a small validation "
        "fold (a few hundred images move val_acc by several points).",
    )
    tta_hflip: Bool = Field(
        False,
        description="Average each prediction with that of the mirrored image (validation and "
        "test). Off: it doubles prediction time for a gain to measure per backbone.",
    )
    seed: Int = Field(
        42, **SEED,
        description="Seeds the model's initialisation and, per epoch, the shuffling, "
        "augmentation and dropout (so a resumed trial repeats exactly), and the Optuna "
        "sampler. Any fixed value makes runs repeatable; 42 is fold_seed's too. Part of the "
        "candidate: another seed is another candidate.",
    )


def candidate_id(train: TrainConfig) -> str:
    """A short stable hash of everything that changes the model.

    The weights file enters by name, not path, so a copy on another machine is the same
    candidate.
    """
    d = train.model_dump(mode="json")
    if d["model"]["weights_file"]:
        d["model"]["weights_file"] = Path(d["model"]["weights_file"]).name
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:10]
