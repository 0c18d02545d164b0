"""The sweep's pre-flight: every check before a trial starts, each a one-line user error.

`preflight` runs them cheapest first: the config against TrainConfig (search space and fixed
candidates), the tracking store, the Ray address; then the data (CSVs, folds, decoded-image
caches, the first things written, only once the config is valid); then Ray is started or
joined and the trial's resources checked against it. It returns what the stages need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .cluster import check_address, check_resources, start_ray
from .config import ConfigError, SweepConfig, with_train_overrides
from .planner import Candidate, probe_values
from .prepare import prepare_data
from .train import check_train

__all__ = ["Preflight", "check_sweep", "image_sizes", "preflight"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preflight:
    """What the checks found that later steps use."""

    fixed: list[Candidate]  # the YAML's `candidates`, validated
    image_sizes: list[int]  # decoded into the image cache before any trial
    slots: int  # trials that fit the Ray cluster at once


def check_sweep(cfg: SweepConfig, where: str) -> list[Candidate]:
    """Validate the search space and fixed candidates against TrainConfig; return the fixed ones.

    Every value a dimension can take at its ends (every choice) is applied to the base config
    and validated, so an unknown key, a wrong range or a backbone timm does not know is one
    line naming the key, before any trial starts. Errors start with `where` (the config file).
    """
    check_train(cfg.train, f"{where}: train")
    for key, spec in cfg.search.space.items():
        for value in probe_values(spec):
            train = with_train_overrides(cfg.train, {key: value},
                                         f"{where}: search.space[{key!r}]={value!r}")
            check_train(train, f"{where}: search.space[{key!r}]")
    if cfg.search.enabled and cfg.search.asha and \
            cfg.search.grace_period <= cfg.train.sched.warmup_epochs:
        _log.warning("%s: search.grace_period=%d is within the %d warm-up epoch(s): ASHA will "
                     "compare trials before their learning rate has warmed up",
                     where, cfg.search.grace_period, cfg.train.sched.warmup_epochs)
    if cfg.search.fold >= cfg.data.n_folds:
        raise ConfigError(f"{where}: search.fold: must be below data.n_folds={cfg.data.n_folds} "
                          f"(got {cfg.search.fold})")
    fixed = []
    for i, overrides in enumerate(cfg.candidates):
        train = with_train_overrides(cfg.train, overrides, f"{where}: candidates[{i}]")
        check_train(train, f"{where}: candidates[{i}]")
        fixed.append(Candidate(dict(overrides), train, "fixed"))
    return fixed


def image_sizes(cfg: SweepConfig, fixed: list[Candidate]) -> list[int]:
    """Every img_size known up front: the base, the fixed candidates', a choice's values.

    A size sampled from a range is decoded by the first trial that asks for it.
    """
    sizes = {cfg.train.img_size, *(c.train.img_size for c in fixed)}
    spec = cfg.search.space.get("img_size")
    if spec is not None and spec.type == "choice":
        sizes |= {int(v) for v in spec.values}
    return sorted(sizes)


def preflight(cfg: SweepConfig, where: str = "config", *, quiet: bool = False) -> Preflight:
    """Run every check (see the module's docstring); start or join Ray last.

    Raises ConfigError, DataError, ModelError or TrackingError with one line naming `where`
    or the file at fault; a Ray already initialised in this process is used as it is.
    """
    import ray

    from .tracking import check_tracking

    fixed = check_sweep(cfg, where)
    check_tracking(cfg.tracking_uri)
    joining = not ray.is_initialized()
    if joining:
        check_address(cfg)
    # Validate the CSVs, make the folds and decode the images once, here, before any trial:
    # every trial then reads the same folds file and memory-maps the same cache.
    sizes = image_sizes(cfg, fixed)
    for size in sizes:
        prepare_data(cfg, size, progress=not quiet)
    if joining:
        start_ray(cfg, quiet)
    return Preflight(fixed, sizes, check_resources(cfg))
