"""Typed configuration: pydantic models (one module per section), YAML loading, `--set`."""

from .data import DataConfig
from .identity import SCALE, PredictionSet, candidate_id, own_view, prediction_sets, view_img_size
from .loading import (
    DuplicateKeyError,
    UniqueKeyLoader,
    apply_overrides,
    load_config,
    parse_overrides,
    read_yaml,
    resolve_paths,
    validate,
    with_train_overrides,
)
from .pseudo import PseudoConfig, PseudoLabels
from .search import ParamSpec, SearchConfig
from .sweep import RayConfig, ResourcesConfig, SweepConfig, address_problem, search_max_epochs
from .train import (
    VIEWS,
    AugConfig,
    EmaConfig,
    LossConfig,
    MixupConfig,
    ModelConfig,
    OptimConfig,
    SchedConfig,
    TrainConfig,
)

__all__ = ["SCALE", "VIEWS", "AugConfig", "DataConfig", "DuplicateKeyError", "EmaConfig",
           "LossConfig", "MixupConfig", "ModelConfig", "OptimConfig", "ParamSpec",
           "PredictionSet", "PseudoConfig", "PseudoLabels", "RayConfig", "ResourcesConfig",
           "SchedConfig", "SearchConfig", "SweepConfig", "TrainConfig", "UniqueKeyLoader",
           "address_problem", "apply_overrides", "candidate_id", "load_config", "own_view",
           "parse_overrides", "prediction_sets", "read_yaml", "resolve_paths",
           "search_max_epochs", "validate", "view_img_size", "with_train_overrides"]
