"""Typed configuration: pydantic models, YAML loading and dotted `--set` overrides."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "AugConfig",
    "ConfigError",
    "DataConfig",
    "EnsembleConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ResourcesConfig",
    "SchedConfig",
    "SearchConfig",
    "SweepConfig",
    "TrainConfig",
    "apply_overrides",
    "candidate_id",
    "load_config",
    "parse_overrides",
]


class ConfigError(ValueError):
    """A user error in a config file or an override; the message is one line."""


class Strict(BaseModel):
    # An unknown key is a typo until proven otherwise (nanoGPT's rule).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- training config


class ModelConfig(Strict):
    name: str = "test_resnet.r160_in1k"
    pretrained: bool = False
    # A local .safetensors / .pth file for machines that cannot reach the hub.
    weights_file: Path | None = None
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path_rate: float | None = Field(None, ge=0.0, lt=1.0)


class OptimConfig(Strict):
    name: str = "adamw"  # any timm.optim.create_optimizer_v2 name
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)


class SchedConfig(Strict):
    name: Literal["cosine", "step", "none"] = "cosine"
    warmup_epochs: int = Field(1, ge=0)
    warmup_lr: float = Field(1e-6, ge=0.0)
    min_lr: float = Field(1e-6, ge=0.0)


class LossConfig(Strict):
    name: Literal["focal", "ce"] = "focal"
    alpha: float = Field(0.5, gt=0.0)  # the reference pipeline's FocalLoss(alpha=0.5, gamma=2)
    gamma: float = Field(2.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class AugConfig(Strict):
    """The reference augmentation pipeline; `strength` scales every probability and magnitude."""

    strength: float = Field(1.0, ge=0.0, le=2.0)
    hflip_p: float = Field(0.5, ge=0.0, le=1.0)
    rotate_limit: float = Field(30.0, ge=0.0, le=180.0)
    rotate_p: float = Field(0.5, ge=0.0, le=1.0)
    dropout_p: float = Field(0.5, ge=0.0, le=1.0)
    dropout_max_holes: int = Field(8, ge=1)
    dropout_size: int = Field(16, ge=1)  # px at img_size 224; scaled with img_size
    grid_distortion_p: float = Field(0.5, ge=0.0, le=1.0)
    grid_distort_limit: tuple[float, float] = (-0.03, 0.05)
    unsharp_p: float = Field(0.5, ge=0.0, le=1.0)
    unsharp_kernel: int = Field(7, ge=3)
    unsharp_sigma: float = Field(1.5, gt=0.0)
    unsharp_amount: float = Field(1.5, ge=0.0)
    unsharp_threshold: float = Field(0.0, ge=0.0)
    brightness: float = Field(-0.2, ge=-1.0, le=1.0)
    brightness_p: float = Field(0.5, ge=0.0, le=1.0)
    # Sketches are dark strokes on white: pad rotations and distortions with white.
    fill: int = Field(255, ge=0, le=255)

    @field_validator("unsharp_kernel")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd but got {v}")
        return v


class TrainConfig(Strict):
    """One candidate: everything that changes the trained model (the fold excepted)."""

    model: ModelConfig = ModelConfig()
    img_size: int = Field(64, ge=16, le=1024)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    optim: OptimConfig = OptimConfig()
    sched: SchedConfig = SchedConfig()
    loss: LossConfig = LossConfig()
    aug: AugConfig = AugConfig()
    # Stop a fold after this many epochs without a better val_acc.
    patience: int = Field(5, ge=1)
    tta_hflip: bool = False
    seed: int = 42


class DataConfig(Strict):
    """Where the data lives and how it is read. Not part of the candidate hash."""

    train_csv: Path = Path("data/demo/train.csv")
    test_csv: Path = Path("data/demo/test.csv")
    image_root: Path | None = None  # train image_path is relative to it; default: CSV's folder
    # test image_path is relative to it; default: image_root. (Some releases of the competition
    # data list train paths relative to train/ and test paths relative to test/.)
    test_image_root: Path | None = None
    n_folds: int = Field(5, ge=2)
    fold_seed: int = 42
    folds_csv: Path | None = None  # default: <train_csv folder>/folds/k{n}_seed{s}.csv
    cache_dir: Path | None = None  # default: <train_csv folder>/.cache
    num_workers: int = Field(2, ge=0)

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
    """One dimension of the search space, addressed by a dotted key into TrainConfig."""

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

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
    enabled: bool = True
    num_samples: int = Field(4, ge=1)
    fold: int = Field(0, ge=0)
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    space: dict[str, ParamSpec] = {}
    # ASHA: stop a trial at grace_period epochs unless it is in the top 1/reduction_factor.
    asha: bool = True
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    top_k_per_backbone: int = Field(1, ge=1)


class ResourcesConfig(Strict):
    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)  # fractional values pack small models onto one GPU


class RayConfig(Strict):
    address: str | None = None  # None: a local Ray; "auto": join `ray start --head`
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)
    # Run the next trial in the process of the last one: saves ~5 s of start-up and imports
    # per trial (benchmarks/RESULTS-sweep.md); every trial rebuilds all it uses anyway.
    reuse_actors: bool = True
    verbose: int = Field(1, ge=0, le=3)


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
    method: Annotated[str, AfterValidator(_ensemble_method)] = "auto"
    metric: Annotated[Literal["log_loss", "acc"], BeforeValidator(_metric_name)] = "log_loss"
    greedy_iterations: int = Field(25, ge=1)  # AutoGluon's default
    greedy_sorted_init: int = Field(0, ge=0)
    greedy_bagging: int = Field(0, ge=0)
    temperature: bool = False
    prune_threshold: float = Field(0.95, gt=-1.0, le=1.0)
    prune_then: Literal["mean", "greedy"] = "mean"  # what `pruned` does with the survivors
    seed: int = 42


class SweepConfig(Strict):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    # A local folder, or on a cluster a folder every node mounts (NFS). The prediction store
    # is plain files, so cloud URIs (s3://, gs://) are refused rather than half supported.
    storage_path: Path = Path("sweeps")
    tracking_uri: str | None = None  # default: sqlite:///<project root>/mlflow.db
    # Keep each fold's best weights (safetensors) beside its predictions, for predicting new
    # images later. A b36 model is ~400 MB a fold: turn off to save disk.
    save_weights: bool = True
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    # Fixed candidates: dotted overrides of `train`, trained on every fold.
    candidates: list[dict[str, Any]] = []
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()
    ensemble: EnsembleConfig = EnsembleConfig()

    @field_validator("storage_path", mode="before")
    @classmethod
    def _no_uri(cls, v: Any) -> Any:
        if "://" in str(v):
            raise ValueError("cloud storage URIs are not supported (the prediction store is "
                             "plain files): use a folder every node mounts, e.g. NFS")
        return v

    @property
    def sweep_dir(self) -> Path:
        return self.storage_path / self.name


# ---------------------------------------------------------------- loading


def _format_error(err: ValidationError, source: str, raw: dict[str, Any]) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    value = _lookup(raw, key)
    got = f" (got {value!r})" if value is not _MISSING else ""
    msg = e["msg"].removeprefix("Value error, ")
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {msg}{got}{more}"


_MISSING = object()


def _lookup(raw: Any, dotted: str) -> Any:
    cur = raw
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["a.b=1", "c=[x, y]"]` -> `{"a.b": 1, "c": ["x", "y"]}`; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted keys set; intermediate dicts are created."""
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        cur = raw
        for i, part in enumerate(parts[:-1]):
            nxt = cur.get(part)
            if nxt is None:
                nxt = cur[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is a value, not a section; "
                                  f"set {'.'.join(parts[:i + 1])!r} itself")
            cur = nxt
        cur[parts[-1]] = value
    return raw


def validate(model: type[BaseModel], raw: dict[str, Any], source: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source, raw)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML: {first}") from None
    if raw is None:
        raw = {}
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

    def absolute(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

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
        upd["tracking_uri"] = f"sqlite:///{base / 'mlflow.db'}"
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
