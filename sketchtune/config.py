"""Typed configuration: pydantic models, YAML loading and dotted `--set` overrides."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .errors import first_line
from .storage import URI, location

__all__ = [
    "AugConfig",
    "ConfigError",
    "DataConfig",
    "DuplicateKeyError",
    "EnsembleConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ResourcesConfig",
    "SchedConfig",
    "SearchConfig",
    "SweepConfig",
    "TrainConfig",
    "UniqueKeyLoader",
    "apply_overrides",
    "candidate_id",
    "load_config",
    "parse_overrides",
    "search_max_epochs",
]


class ConfigError(ValueError):
    """A user error in a config file or an override; the message is one line."""


class Strict(BaseModel):
    # An unknown key is a typo until proven otherwise (nanoGPT's rule).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _location(value: Any) -> Path | URI:
    if isinstance(value, (str, Path, URI)) and str(value).strip():
        return location(value)
    raise ValueError(f"expected a folder or a storage URI (s3://bucket/path), got {value!r}")


# A local path or a cloud URI (`sketchtune.storage`); written back as the text it was given.
StorageLocation = Annotated[Path | URI, PlainValidator(_location),
                            PlainSerializer(str, when_used="json"),
                            WithJsonSchema({"type": "string"})]


# Field types that say what they mean. pydantic's lax mode reads YAML's `epochs: yes` (a bool)
# as 1, `epochs: 2.0` as 2 and `epochs: "3"` as 3, and a bool as 1.0 for a float: a config
# that means something else than it says. Ints and bools are strict. Floats stay lax for
# strings, because YAML 1.1 reads `1e-3` (no dot) as a string and users write it that way;
# they refuse bools, and NaN or infinity, which pass or bend every range check below.
def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Float = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
# numpy's RandomState (the folds' StratifiedKFold, the ensemble's bagging) takes 0..2**32-1.
_SEED = {"ge": 0, "le": 2**32 - 1}


# Every field carries its description and the reason for its default; docs/config.md is
# generated from them (`python -m sketchtune.configdoc --write`), never written by hand.

# ---------------------------------------------------------------- training config


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
        42, **_SEED,
        description="Seeds the model's initialisation and, per epoch, the shuffling, "
        "augmentation and dropout (so a resumed trial repeats exactly), and the Optuna "
        "sampler. Any fixed value makes runs repeatable; 42 is fold_seed's too. Part of the "
        "candidate: another seed is another candidate.",
    )


class DataConfig(Strict):
    """Where the data lives and how it is read. Not part of the candidate hash.

    Relative paths are relative to the working directory the command runs from (made absolute
    when the config is loaded, since Ray runs each trial in a directory of its own).
    """

    train_csv: Path = Field(
        Path("data/demo/train.csv"),
        description="`class_name,image_path,target`, one row per labelled image (targets "
        "0..C-1). Default: the demo data that `python -m sketchtune.demo` writes.",
    )
    test_csv: Path = Field(
        Path("data/demo/test.csv"),
        description="`image_path`, one row per image to predict; the submission follows its "
        "order. Default: the demo data's.",
    )
    image_root: Path | None = Field(
        None,
        description="Folder that train `image_path`s are relative to. null: the train CSV's "
        "folder, the competition layout (`train/<class>/<file>`).",
    )
    test_image_root: Path | None = Field(
        None,
        description="Folder that test `image_path`s are relative to. null: `image_root`. (Some "
        "releases of the competition data list train paths relative to train/ and test paths "
        "relative to test/.)",
    )
    n_folds: Int = Field(
        5, ge=2,
        description="Folds of the cross-validation; every candidate trains once per fold. 5: "
        "the reference pipeline's StratifiedKFold(5); with ~30 images a class it leaves ~6 a "
        "class in each validation fold.",
    )
    fold_seed: Int = Field(
        42, **_SEED,
        description="`random_state` of the StratifiedKFold split. 42: the reference "
        "pipeline's, so the same CSV gets the same folds.",
    )
    folds_csv: StorageLocation | None = Field(
        None,
        description="The fold of each train row, written once and read by every trial (a "
        "stale file is refused). null: `<train_csv folder>/folds/k{n_folds}_seed{fold_seed}.csv`, "
        "so another split gets a file of its own. A storage URI (`s3://bucket/folds.csv`) "
        "shares one file across a cluster's nodes.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where decoded, resized images are cached (one memory-mapped file per "
        "image list and size, shared by every trial). null: `<train_csv folder>/.cache`, beside "
        "the data it is made from.",
    )
    num_workers: Int = Field(
        2, ge=0,
        description="DataLoader worker processes per trial. Images come decoded from the "
        "cache, so workers only augment: 2 overlap that with training; on a 2-core machine 0 "
        "is fastest (the demo config; benchmarks/RESULTS-loader.md).",
    )

    @model_validator(mode="after")
    def _defaults(self) -> DataConfig:
        if self.image_root is None:
            self.image_root = self.train_csv.parent
        if self.test_image_root is None:
            self.test_image_root = self.image_root
        if self.folds_csv is None:
            name = f"k{self.n_folds}_seed{self.fold_seed}.csv"
            self.folds_csv = self.train_csv.parent / "folds" / name
        if self.cache_dir is None:
            self.cache_dir = self.train_csv.parent / ".cache"
        return self


# ---------------------------------------------------------------- sweep config


class ParamSpec(Strict):
    """One dimension of the search space, addressed by a dotted key into TrainConfig.

    Every value a dimension can take at its ends (and every choice) is validated against
    TrainConfig before Ray starts.
    """

    type: Literal["uniform", "loguniform", "int", "choice"] = Field(
        description="`uniform`: a float in [low, high]; `loguniform`: the same on a log scale "
        "(for scales such as `optim.lr`); `int`: an integer in [low, high], both ends "
        "included; `choice`: one of `values`. Required: there is no sensible default.",
    )
    low: Float | None = Field(None, description="Lower end, for every type but `choice`.")
    high: Float | None = Field(None, description="Upper end (above `low`), for every type but "
                               "`choice`.")
    values: list[Any] | None = Field(None, description="The values of a `choice` (e.g. "
                                     "backbones for `model.name`).")

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a 'choice' needs a non-empty 'values' list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"a '{self.type}' needs 'low' and 'high'")
            if self.low >= self.high:
                raise ValueError(f"low must be below high but got low={self.low}, high={self.high}")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError(f"loguniform low must be positive but got {self.low}")
        return self


class SearchConfig(Strict):
    """Stage *search*: Optuna (TPE) samples `space` on one fold; ASHA stops weak trials early.

    The top configs of each backbone then go to stage *cv*, which trains them on every fold.
    """

    enabled: Bool = Field(
        True,
        description="Run the search stage. Off (or an empty `space`): only the fixed "
        "`candidates`, or the `train` config itself when there are none, go to cv.",
    )
    num_samples: Int = Field(
        4, ge=1,
        description="Configs Optuna samples. 4: the demo on a CPU; real searches use tens "
        "(configs/imagenet_sketch.yaml: 24).",
    )
    fold: Int = Field(
        0, ge=0,
        description="The fold the search trains on (below data.n_folds). A search trial that "
        "ran to its last epoch is already that fold of its candidate, so cv does not train it "
        "again. 0: any fold would do.",
    )
    metric: Literal["val_acc", "val_loss"] = Field(
        "val_acc",
        description="What Optuna optimises and ASHA compares (maximised for val_acc, minimised "
        "for val_loss). val_acc: the competition's metric. The top-k ranking uses the best "
        "val_acc either way.",
    )
    space: dict[str, ParamSpec] = Field(
        {},
        description="Dimensions by dotted key into `train` (`optim.lr`, `model.name`, "
        "`aug.strength`). Empty: no search.",
    )
    asha: Bool = Field(
        True,
        description="Stop weak trials early with ASHA. On: with tens of epochs it saves most "
        "of a search's work. A rung compares val_acc mid-training, so a backbone that starts "
        "slowly is stopped before it overtakes: on the 4-epoch demo (configs/sweep.yaml turns it "
        "off) every saving setting lost the best config (benchmarks/RESULTS-sweep.md).",
    )
    grace_period: Int = Field(
        1, ge=1,
        description="Epochs every trial runs before ASHA may stop it; at each rung after it, "
        "a trial goes on only if it is in the top 1/reduction_factor. 1: Ray's default, the "
        "least work; set "
        "it past `train.sched.warmup_epochs` when backbones warm up at different speeds (the "
        "sweep warns otherwise; benchmarks/RESULTS-sweep.md).",
    )
    reduction_factor: Float = Field(
        2.0, gt=1.0,
        description="ASHA keeps the top 1/reduction_factor of the trials at each rung. 2, not "
        "Ray's 4: with a handful of samples, keeping a quarter would leave one trial.",
    )
    top_k_per_backbone: Int = Field(
        1, ge=1,
        description="How many of each backbone's best search configs go to cv (trials that "
        "ran further rank first, then by best val_acc). 1: cv costs one config x n_folds per "
        "backbone, and an ensemble gains most from different backbones.",
    )
    select: Literal["top_k", "ensemble"] = Field(
        "top_k",
        description="How the search's configs for cv are chosen. top_k: the "
        "`top_k_per_backbone` best of each backbone by fold-`fold` val_acc. ensemble: greedy "
        "forward selection (Caruana, with replacement) on the `fold` validation predictions of "
        "every trial that ran to its last epoch, by accuracy with log loss breaking ties, until "
        "`budget` distinct configs are chosen (hyper-deep ensembles, Wenzel et al. 2020); the "
        "top_k ranking fills the budget when fewer trials finished. top_k: over 3 demo seeds "
        "`ensemble` did not win (submission accuracy 0.7560 vs 0.7587, "
        "benchmarks/RESULTS-selection.md): its gains on one fold's predictions are a handful "
        "of images; it can only differ when more trials finish than the budget.",
    )
    budget: Int | None = Field(
        None, ge=1,
        description="How many configs `select: ensemble` sends to cv. None: as many as top_k "
        "would pick (`top_k_per_backbone` x the backbones the search tried), so both rules "
        "cost the same cv trials.",
    )


class ResourcesConfig(Strict):
    """What each trial asks Ray for; Ray runs as many trials at once as these fit."""

    cpu: Float = Field(
        1.0, gt=0.0,
        description="CPUs per trial (Ray sets a trial's OMP_NUM_THREADS to it unless already "
        "set). 1: "
        "one trial per core on a CPU machine, the steadiest on a small one "
        "(benchmarks/RESULTS-sweep.md).",
    )
    gpu: Float = Field(
        0.0, ge=0.0,
        description="GPUs per trial; a fraction packs small models onto one GPU (a scheduling "
        "count only: size it by memory). 0: the demo runs on a CPU.",
    )


def address_problem(address: str) -> str | None:
    """Why `address` is not one Ray can join (`auto`, HOST:PORT, ray://HOST:PORT), or None.

    Ray's own parser fails on the rest only at `ray.init`, after pre-flight, as a ValueError
    ("Invalid address format: localhost") that is no user error of ours.
    """
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if (host and "/" not in host and not any(c.isspace() for c in address)
            and port.isdigit() and 0 < int(port) < 65536):
        return None
    return ("expected null, 'auto' or HOST:PORT (e.g. 10.0.0.5:6379, the port "
            "`ray start --head` printed)")


def _ray_address(address: str | None) -> str | None:
    if address is not None and (problem := address_problem(address)):
        raise ValueError(problem)
    return address


class RayConfig(Strict):
    """How the sweep starts or joins Ray, and how Tune runs its trials."""

    address: Annotated[str | None, AfterValidator(_ray_address)] = Field(
        None,
        description="null: a fresh local Ray of the sweep's own; `auto`: join the cluster "
        "`ray start --head` recorded on this machine (or `$RAY_ADDRESS`), refused when there "
        "is none rather than joining any Ray process found; or `HOST:PORT`. null rather than "
        "Ray's own default, which would join whatever cluster this machine last ran, even a "
        "dead one.",
    )
    max_concurrent_trials: Int | None = Field(
        None, ge=1,
        description="At most this many trials at once. null: as many as `resources` fit.",
    )
    max_failures: Int = Field(
        2, ge=0,
        description="Times Ray retries a failed trial from its last checkpoint. 2: rides out a "
        "crashed process or a lost node without looping on a bug.",
    )
    reuse_actors: Bool = Field(
        True,
        description="Run the next trial in the process of the last one. On: it saves ~5 s of "
        "start-up and imports per trial (benchmarks/RESULTS-sweep.md), and every trial "
        "rebuilds all it uses anyway; turn off if a backbone leaks memory between trials.",
    )
    verbose: Int = Field(
        1, ge=0, le=3,
        description="Ray Tune's verbosity: 0 silent, 1 default (its status table), 2 verbose "
        "(3: Tune's old output's most detailed); --quiet sets 0. 1: Tune's own default.",
    )


def _ensemble_method(name: str) -> str:
    """`auto` or a method of the ensemble registry (`ensemble_search.methods.METHODS`)."""
    if name == "auto":
        return name
    # Imported here: ensemble_search imports this module, and the registry is its classes.
    from ensemble_search.methods import METHODS

    if name not in METHODS:
        raise ValueError(f"unknown ensemble method {name!r}; choose from "
                         f"{', '.join(['auto', *METHODS])}")
    return name


def _metric_name(value: Any) -> Any:
    # `accuracy` is the older spelling; `acc` is the suffix of the metric names (honest_acc).
    return "acc" if value == "accuracy" else value


class EnsembleConfig(Strict):
    """The ensemble search (`python -m ensemble_search.optimize`): weights from OOF predictions."""

    method: Annotated[str, AfterValidator(_ensemble_method)] = Field(
        "auto",
        description="How candidates are weighted: `auto` or a method of the registry "
        "(`python -m ensemble_search.optimize --help` lists them). `auto` fits every method and "
        "keeps the one with the best honest estimate (weights fitted on k-1 folds, scored on the "
        "held-out one) on `metric`, so the choice is not made on the rows that fitted it.",
    )
    metric: Annotated[Literal["log_loss", "acc"], BeforeValidator(_metric_name)] = Field(
        "acc",
        description="What greedy selection, `optimized` (a smooth surrogate of accuracy from "
        "its log-loss weights), pruning's ranking and the best single candidate optimise, and "
        "what `auto` compares. acc (accuracy; the older spelling `accuracy` is accepted): the "
        "competition's metric and both shipped configs'. log_loss rewards calibrated "
        "probabilities and separates candidates that accuracy ties.",
    )
    greedy_iterations: Int = Field(
        25, ge=1,
        description="Picks (with replacement) of greedy selection; the weights are the pick "
        "counts. 25: AutoGluon's default ensemble size.",
    )
    greedy_sorted_init: Int = Field(
        0, ge=0,
        description="Start greedy selection from this many best single candidates (Caruana et "
        "al. 2004's sorted initialisation). 0: start empty.",
    )
    greedy_bagging: Int = Field(
        0, ge=0,
        description="If above 0, run greedy selection on this many random halves of the "
        "candidates and average the weights. 0: off; a sweep has few candidates, and a half "
        "of few is fewer.",
    )
    temperature: Bool = Field(
        False,
        description="Also fit one temperature on `optimized`'s average, after its weights (only "
        "`optimized` has it). It changes log loss only, never accuracy: it never changes a row's "
        "predicted class. It comes after the weights because the candidates are already "
        "calibrated one by one before them (a temperature each, always on); this one only "
        "undoes the flattening that averaging causes. Off: accuracy is the metric.",
    )
    prune_threshold: Float = Field(
        0.7, gt=-1.0, le=1.0,
        description="`pruned` drops a candidate whose errors correlate (phi of the 'wrong on "
        "this image' indicators) above this with a better one's. Errors, not probabilities: "
        "every decent model puts its mass on the true class, so probability correlations sit "
        "near 0.9 for models that still err differently. 0.7: chosen by measurement "
        "(benchmarks/RESULTS-ensemble.md); it drops models whose mistakes mostly repeat a "
        "better one's.",
    )
    prune_then: Literal["mean", "greedy"] = Field(
        "mean",
        description="What `pruned` does with the survivors: average them, or select greedily. "
        "mean: pruning is there to make a plain average work.",
    )
    seed: Int = Field(42, **_SEED, description="Seeds greedy bagging's random halves. 42: the "
                      "project's seed everywhere.")


class SweepConfig(Strict):
    """A sweep: the data, the base training config, the search, Ray, MLflow and the ensemble."""

    name: str = Field(
        # Not only dots: "." would be storage_path itself and ".." the folder above it.
        "demo", pattern=r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$",
        description="The sweep's name: its folder under `storage_path` and its MLflow "
        "experiment. Default: the demo's.",
    )
    storage_path: StorageLocation = Field(
        Path("sweeps"),
        description="Where sweeps live: Ray's trials and checkpoints and the prediction store "
        "under `<storage_path>/<name>`. A local folder; on a cluster a folder every node "
        "mounts (NFS) or any URI `pyarrow.fs` opens (`s3://bucket/sweeps`, `gs://...`): "
        "credentials and endpoint the standard way (`AWS_ACCESS_KEY_ID`, ..., "
        "`AWS_ENDPOINT_URL` for an S3-compatible server, or `?endpoint_override=host:port"
        "&scheme=http` in the URI), forwarded to Ray's workers; checked with a probe write "
        "before anything starts. MLflow's artifacts go to the same bucket when its server "
        "is started with `--default-artifact-root s3://bucket/mlflow` (and "
        "`MLFLOW_S3_ENDPOINT_URL` for an S3-compatible endpoint).",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; an `http://` server for a team. null: "
        "`$MLFLOW_TRACKING_URI` when it is set (as MLflow itself reads it), else "
        "`sqlite:///mlflow.db` in the working directory the command runs from, with artifacts "
        "in `mlruns/` beside it, MLflow's own default, so a plain `mlflow ui` there shows every "
        "sweep (made absolute at load: Ray moves each trial into its own directory).",
    )
    save_weights: Bool = Field(
        True,
        description="Keep each fold's best weights (safetensors) beside its predictions, for "
        "predicting new images later. A b36 model is ~400 MB a fold: turn off to save disk.",
    )
    data: DataConfig = Field(DataConfig(), description="The data.")
    train: TrainConfig = Field(TrainConfig(), description="The base candidate that `search` "
                               "and `candidates` override.")
    search: SearchConfig = Field(SearchConfig(), description="Stage search.")
    candidates: list[dict[str, Any]] = Field(
        [],
        description="Fixed candidates: each a map of dotted overrides of `train` (e.g. "
        "`{model.name: ..., optim.lr: ...}`), trained on every fold besides the search's "
        "choices. Empty: only the search's.",
    )
    resources: ResourcesConfig = Field(ResourcesConfig(), description="Per-trial resources.")
    ray: RayConfig = Field(RayConfig(), description="Ray and Tune.")
    ensemble: EnsembleConfig = Field(EnsembleConfig(), description="The ensemble search.")

    @model_validator(mode="after")
    def _search_fits_train(self) -> SweepConfig:
        # A dimension whose draws do not fit its field's type would pass the probe of its ends
        # (pydantic takes 16.0 for an int) and fail the first trial; say so here instead.
        for key, spec in self.search.space.items():
            problem = _dimension_problem(key, spec)
            if problem:
                raise ValueError(f"search.space[{key!r}]: {problem}")
        s = self.search
        if s.enabled and s.asha and s.space:
            max_t = search_max_epochs(self)
            if s.grace_period > max_t:
                where = ("train.epochs" if "epochs" not in s.space
                         else "train.epochs and search.space['epochs']")
                raise ValueError(
                    f"search.grace_period={s.grace_period} is above the {max_t} epoch(s) a "
                    f"search trial can run ({where}; ASHA's max_t): lower search.grace_period "
                    "or raise train.epochs")
        return self

    @property
    def sweep_dir(self) -> Path | URI:
        return self.storage_path / self.name


def search_max_epochs(cfg: SweepConfig) -> int:
    """The most epochs a search trial can run: the base's, or the space's largest."""
    spec = cfg.search.space.get("epochs")
    if spec is None:
        return cfg.train.epochs
    ends = list(spec.values or []) if spec.type == "choice" else [spec.low, spec.high]
    return max([cfg.train.epochs, *(int(v) for v in ends)])


def _field_type(dotted: str) -> Any:
    """The annotation of TrainConfig's field at a dotted key, or None when there is none."""
    model: Any = TrainConfig
    ann: Any = None
    for part in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) \
                or part not in model.model_fields:
            return None  # an unknown key: the probe of the dimension's values names it
        ann = model = model.model_fields[part].annotation
    return ann


def _value_fits(value: Any, kinds: set[type], literals: tuple) -> bool:
    if value is None:
        return type(None) in kinds
    if literals:
        return value in literals
    if isinstance(value, bool):  # a bool is an int to Python; to a config key it is not
        return bool in kinds
    if isinstance(value, int):
        return bool(kinds & {int, float})
    if isinstance(value, float):
        return float in kinds
    if isinstance(value, str):
        return bool(kinds & {str, Path})
    return False


def _unannotated(ann: Any) -> Any:
    """`Annotated[float, ...]` (the strict `Int`, `Float`, `Bool`) -> `float`; others unchanged."""
    return get_args(ann)[0] if get_origin(ann) is Annotated else ann


def _dimension_problem(key: str, spec: ParamSpec) -> str | None:
    """Why `spec` cannot fill TrainConfig's `key` (None when it can, or the key is unknown)."""
    ann = _field_type(key)
    if ann is None:
        return None
    ann = _unannotated(ann)
    args = get_args(ann) if get_origin(ann) in (Union, types.UnionType) else (ann,)
    kinds: set[type] = set()
    literals: tuple = ()
    for a in map(_unannotated, args):
        if get_origin(a) is Literal:
            literals += get_args(a)
            kinds |= {type(v) for v in get_args(a)}
        elif isinstance(a, type):
            kinds.add(a)
    if kinds & {dict, list} or any(isinstance(k, type) and issubclass(k, BaseModel)
                                   for k in kinds):
        return None  # a section or a list: the probe validates it as a whole
    names = (f"one of {list(literals)}" if literals
             else "/".join(sorted(k.__name__ for k in kinds if k is not type(None))))
    if spec.type == "choice":
        bad = [v for v in spec.values or [] if not _value_fits(v, kinds, literals)]
        if bad:
            return f"choice value {bad[0]!r} does not fit train.{key}, which takes {names}"
        return None
    if float in kinds or (spec.type == "int" and int in kinds):
        return None
    if int in kinds and bool not in kinds:
        return (f"a {spec.type!r} dimension draws floats but train.{key} takes an integer; "
                "use type 'int' or a 'choice' of integers")
    return (f"a {spec.type!r} dimension draws numbers but train.{key} takes {names}; "
            "use a 'choice' of its values")


# ---------------------------------------------------------------- loading


def _format_error(err: ValidationError, source: str, raw: dict[str, Any]) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    value = _lookup(raw, e["loc"])
    got = f" (got {value!r})" if value is not _MISSING else ""
    msg = e["msg"].removeprefix("Value error, ")
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    # A check across sections (a model validator of the whole config) names its keys itself.
    return f"{source}: {key}: {msg}{got}{more}" if key else f"{source}: {msg}{more}"


_MISSING = object()


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    # By pydantic's loc, not a dotted string: search.space's keys contain dots themselves.
    cur = raw
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
        else:
            return _MISSING
    return cur


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping gives one key twice; the message is one line with both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping.

    YAML 1.1 loaders keep the last value silently, so `epochs: 50` above a forgotten
    `epochs: 1` trains for one epoch. A `<<: *anchor` merge may still be overridden by a key
    beside it: that is what merging is for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeLoader's own error names it below
                continue
            if first is not None:
                raise DuplicateKeyError(f"duplicate key {key!r} at line {line} (first at line "
                                        f"{first}); YAML would keep the last one silently")
        return super().construct_mapping(node, deep=deep)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["a.b=1", "c=[x, y]"]` -> `{"a.b": 1, "c": ["x", "y"]}`; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
        try:
            out[key.strip()] = yaml.load(value, Loader=UniqueKeyLoader) if value.strip() else None
        except DuplicateKeyError as err:
            raise ConfigError(f"--set {item!r}: {err}") from None
        except yaml.YAMLError:  # not YAML: the text itself (a name with a colon, say)
            out[key.strip()] = value
    return out


def _is_dotted_map(path: list[Any]) -> bool:
    # Maps whose keys are themselves dotted keys into `train` (`optim.lr`): search.space and
    # each fixed candidate. A --set path into one is matched against its keys, longest first,
    # instead of being split at every dot.
    return path == ["search", "space"] or (len(path) == 2 and path[0] == "candidates")


def _space_hint(dotted: str, rest: list[str], space: dict[str, Any]) -> str:
    name = ".".join(rest[:-1]) if len(rest) > 1 else rest[0]
    have = f" (it has {', '.join(map(str, space))})" if space else ""
    return (f"override {dotted!r}: search.space has no dimension {name!r}{have}; give a new "
            f"one whole: --set 'search.space.{name}={{type: uniform, low: 0.1, high: 0.5}}'")


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted keys set; intermediate dicts are created.

    A list is entered by index (`candidates.0.optim.lr`). Inside `search.space` and a
    candidate, whose keys contain dots, the longest key the path starts with is used
    (`search.space.optim.lr.high` is `high` of the dimension `optim.lr`); no such key makes
    the rest of the path one new key.
    """
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        cur: Any = raw
        path: list[Any] = []
        i = 0
        while True:
            if isinstance(cur, list):
                n = len(cur)
                if not (parts[i].isdigit() and int(parts[i]) < n):
                    raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:i])!r} is a list "
                                      f"of {n}; give an index below {n} or set the list whole")
                key: Any = int(parts[i])
                j = i + 1
            elif _is_dotted_map(path):
                j = next((j for j in range(len(parts), i, -1)
                          if ".".join(parts[i:j]) in cur), len(parts))
                key = ".".join(parts[i:j])
                if key not in cur and path == ["search", "space"] and not isinstance(value, dict):
                    raise ConfigError(_space_hint(dotted, parts[i:], cur))
            else:
                key, j = parts[i], i + 1
            if j == len(parts):
                cur[key] = value
                break
            nxt = cur[key] if isinstance(cur, list) else cur.get(key)
            if nxt is None:
                nxt = cur[key] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:j - 1] + [str(key)])!r} "
                                  f"is a value, not a section; set it itself")
            cur, path, i = nxt, [*path, key], j
    return raw


def validate(model: type[BaseModel], raw: dict[str, Any], source: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source, raw)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """The config file's top-level mapping; every way it can fail is one ConfigError line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file (e.g. configs/sweep.yaml)")
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid YAML: not UTF-8 text ({err.reason} at byte "
                          f"{err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config: {err.strerror or err}") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {first_line(err)}") from None
    if raw is None or raw == {}:
        # Every default is the demo's: a sweep of nothing the user chose.
        raise ConfigError(f"{path}: empty config; copy configs/sweep.yaml and edit it")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_config(
    path: str | Path, overrides: list[str] | None = None, model: type[BaseModel] = SweepConfig
) -> Any:
    """Read YAML, apply `--set` overrides, validate, and make every path absolute."""
    path = Path(path)
    raw = read_yaml(path)
    source = f"{path}" + (" (with --set overrides)" if overrides else "")
    try:
        raw = apply_overrides(raw, parse_overrides(overrides))
    except ConfigError as err:  # name the config the bad --set was meant for
        raise ConfigError(f"{source}: {err}") from None
    cfg = validate(model, raw, source)
    if isinstance(cfg, SweepConfig):
        cfg = resolve_paths(cfg)
    return cfg


def resolve_paths(cfg: SweepConfig, base: Path | None = None) -> SweepConfig:
    """Absolute paths, relative to `base` (default: the working directory).

    Ray runs each trial in a directory of its own, so a relative path would point
    somewhere else inside a trial.
    """
    base = (base or Path.cwd()).resolve()

    def absolute(p: Path | URI | None) -> Path | URI | None:
        if p is None or isinstance(p, URI) or p.is_absolute():  # a URI is absolute already
            return p
        return base / p

    d = cfg.data
    data = d.model_copy(
        update={
            k: absolute(getattr(d, k))
            for k in ("train_csv", "test_csv", "image_root", "test_image_root", "folds_csv",
                      "cache_dir")
        }
    )
    upd: dict[str, Any] = {"data": data}
    upd["storage_path"] = absolute(cfg.storage_path)
    if cfg.tracking_uri is None:
        # MLflow's own default: the environment's URI first, so an exported server is not
        # silently bypassed for a local file.
        upd["tracking_uri"] = (os.environ.get("MLFLOW_TRACKING_URI")
                               or f"sqlite:///{base / 'mlflow.db'}")
    mw = cfg.train.model.weights_file
    if mw is not None:
        upd["train"] = cfg.train.model_copy(
            update={"model": cfg.train.model.model_copy(update={"weights_file": absolute(mw)})}
        )
    return cfg.model_copy(update=upd)


def with_train_overrides(base: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    """Apply dotted overrides (`optim.lr`, `model.name`) to a TrainConfig and validate again."""
    raw = apply_overrides(base.model_dump(mode="json"), overrides)
    return validate(TrainConfig, raw, source)


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
