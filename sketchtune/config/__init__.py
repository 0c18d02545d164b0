"""Typed configuration: pydantic models (one module per section), YAML loading, `--set`."""

from .data import DataConfig
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
from .search import ParamSpec, SearchConfig
from .sweep import RayConfig, ResourcesConfig, SweepConfig, address_problem, search_max_epochs
from .train import (
    AugConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    SchedConfig,
    TrainConfig,
    candidate_id,
)

__all__ = ["AugConfig", "DataConfig", "DuplicateKeyError", "LossConfig", "ModelConfig",
           "OptimConfig", "ParamSpec", "RayConfig", "ResourcesConfig", "SchedConfig",
           "SearchConfig", "SweepConfig", "TrainConfig", "UniqueKeyLoader", "address_problem",
           "apply_overrides", "candidate_id", "load_config", "parse_overrides", "read_yaml",
           "resolve_paths", "search_max_epochs", "validate", "with_train_overrides"]
