"""One candidate's training config (`TrainConfig`: model, optimizer, schedule, loss, augmentation,
timm's training extras, the prediction sets it stores); its id is in `identity`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .fields import SEED, Bool, Float, Int, Strict
from .pseudo import PseudoLabels

__all__ = ["VIEWS", "AugConfig", "EmaConfig", "LossConfig", "MixupConfig", "ModelConfig",
           "OptimConfig", "SchedConfig", "TrainConfig", "View"]

# The ways a trained fold model can predict an image (`TrainConfig.views`).
View = Literal["plain", "hflip", "hflip_avg", "scale"]
VIEWS: tuple[str, ...] = ("plain", "hflip", "hflip_avg", "scale")

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
    layer_decay: Float | None = Field(
        None, gt=0.0, le=1.0,
        description="Layer-wise learning-rate decay (timm's `create_optimizer_v2(layer_decay=)`):"
        " the head learns at `lr`, each block below it at this factor times the block above, so "
        "pretrained early layers move least. The usual values for fine-tuning ViT-style "
        "backbones are 0.65-0.85 (EVA-02's recipes: 0.7-0.85). null: off, one learning rate "
        "for every layer, as before the key existed.",
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


class MixupConfig(Strict):
    """Mixup / CutMix (`timm.data.Mixup`): pairs of training images blended or pasted into each
    other, their targets mixed in the same proportion (soft targets; `losses.FocalLoss` defines
    the focal loss on them). Active when either alpha is above 0.

    Label smoothing stays in the loss (`loss.label_smoothing`), not in the Mixup: the loss
    smooths the mixed target, which for cross entropy is exactly timm's smoothed mixed target,
    and keeps the focal loss of an unmixed batch what it was without Mixup.
    """

    mixup_alpha: Float = Field(
        0.0, ge=0.0,
        description="Mixup's blend is drawn from Beta(alpha, alpha); 0: no mixup. 0: off, the "
        "reference pipeline. timm's (and DeiT's) from-scratch recipe uses 0.8; the fine-tuning "
        "recipes of EVA-02 and CAFormer use 0.",
    )
    cutmix_alpha: Float = Field(
        0.0, ge=0.0,
        description="CutMix's pasted area is drawn from Beta(alpha, alpha); 0: no CutMix. 0: "
        "off, the reference pipeline. timm's (and DeiT's) from-scratch recipe uses 1.0.",
    )
    prob: Float = Field(
        1.0, ge=0.0, le=1.0,
        description="Probability that a batch (or pair, or image: `mode`) is mixed at all. 1: "
        "timm's default.",
    )
    switch_prob: Float = Field(
        0.5, ge=0.0, le=1.0,
        description="With both alphas above 0: the probability of CutMix rather than mixup for "
        "a mix. 0.5: timm's default.",
    )
    mode: Literal["batch", "pair", "elem"] = Field(
        "batch",
        description="One draw per `batch`, per `pair` of images, or per image (`elem`). batch: "
        "timm's default and the cheapest.",
    )

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class EmaConfig(Strict):
    """A moving average of the weights (`timm.utils.ModelEmaV3`), updated after every optimizer
    update. Both the raw and the averaged weights are validated each epoch; each keeps its own
    best epoch, and the averaged weights' predictions are stored as candidates of their own
    (`<id>-ema`, see `views`)."""

    enabled: Bool = Field(
        False,
        description="Keep the moving average. Off: the reference pipeline; on, it costs one "
        "more validation pass per epoch and the prediction sets of the EMA weights.",
    )
    decay: Float = Field(
        0.9998, gt=0.0, lt=1.0,
        description="The average's decay per update (its horizon is about 1 / (1 - decay) "
        "updates). 0.9998: timm train.py's default (`--model-ema-decay`); CAFormer's and "
        "EVA-02's fine-tuning recipes use 0.9999 over 30k+ updates.",
    )
    warmup: Bool = Field(
        True,
        description="Ramp the decay up from 0 (1 - (1 + step) ** -2/3, capped at `decay`: "
        "timm's `use_warmup`). On: a fold here runs a few thousand updates, and without the "
        "ramp a 0.9998 average would still be mostly the starting weights at the end.",
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
        description="The candidate's own predictions (validation, so its best epoch, and test) "
        "average each image's with the mirrored image's: its view is `hflip_avg` rather than "
        "`plain`. Off: it doubles prediction time for a gain to measure per backbone; `views` "
        "stores the other views as candidates of their own instead.",
    )
    views: list[View] = Field(
        [],
        description="More prediction sets from the same fold models, each stored as a "
        "candidate of its own, `<id>-<view>`, for the ensemble search to choose among (greedy "
        "selection learns a test-time augmentation: Shanmugam et al. 2020): `plain` (the image "
        "as is), `hflip` (mirrored), `hflip_avg` (the mean of the two), `scale` (at img_size x "
        "1.15, rounded to a multiple of 8: the FixRes effect). The candidate's own view (`plain`,"
        " or `hflip_avg` with `tta_hflip`) is the candidate itself and is not stored twice. With "
        "`ema.enabled` every view is stored for the EMA weights too (`<id>-ema`, "
        "`<id>-ema-<view>`). A fold counts as done when every set is in the store. Outside the "
        "candidate id (it changes no weight). []: today's cost, one prediction set.",
    )
    mixup: MixupConfig = Field(MixupConfig(), description="Mixup / CutMix.")
    ema: EmaConfig = Field(EmaConfig(), description="The moving average of the weights.")
    accum_steps: Int = Field(
        1, ge=1,
        description="Batches per optimizer update (gradient accumulation): the effective batch "
        "is batch_size x accum_steps, each batch's loss is divided by accum_steps, and the "
        "schedule steps per update, so a large effective batch fits a small GPU. 1: one update "
        "per batch, as before the key existed.",
    )
    compile: Bool = Field(
        False,
        description="Compile the model's forward with `torch.compile` (`nn.Module.compile`): "
        "faster epochs on a GPU after a compile of a minute or two per trial, and needs a C "
        "compiler on a CPU. Off: the compile time does not pay on the demo. Outside the "
        "candidate id (the same weights, to float rounding).",
    )
    pseudo: PseudoLabels | None = Field(
        None,
        description="Test images pseudo-labelled by the ensemble, trained on beside the fold's "
        "labelled rows: set by stage pseudo (see `pseudo`), not by hand. null: none.",
    )
    seed: Int = Field(
        42, **SEED,
        description="Seeds the model's initialisation and, per epoch, the shuffling, "
        "augmentation and dropout (so a resumed trial repeats exactly), and the Optuna "
        "sampler. Any fixed value makes runs repeatable; 42 is fold_seed's too. Part of the "
        "candidate: another seed is another candidate.",
    )

    @field_validator("views")
    @classmethod
    def _unique_views(cls, v: list[str]) -> list[str]:
        if len(set(v)) < len(v):
            raise ValueError(f"lists a view twice: {v}")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> TrainConfig:
        if self.mixup.active and self.batch_size % 2:
            raise ValueError(f"batch_size must be even with mixup or cutmix on (timm's Mixup "
                             f"pairs each image with another) but got {self.batch_size}")
        if self.pseudo is not None and self.pseudo.labels == "soft" and self.mixup.active:
            raise ValueError("pseudo.labels 'soft' and mixup cannot be combined: timm's Mixup "
                             "mixes class indices, not soft targets; use pseudo.labels hard")
        if self.optim.layer_decay is not None and self.sched.name == "none":
            raise ValueError("optim.layer_decay needs a schedule (sched.name cosine or step): "
                             "timm's scheduler is what applies each layer's lr scale")
        return self
