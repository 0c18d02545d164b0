"""Pre-flight: every check before anything is written or a trial starts, each a one-line error.

`preflight` (the sweep) runs them cheapest first: the config against TrainConfig (search
space and fixed candidates); the machine (`check_environment`: devices, writable folders,
each backbone at its image size, pretrained weights); the tracking store; the Ray address
(a cluster's, with its token, is joined here); then the data (CSVs, folds, decoded-image
caches, the first things written, only once all else passed); then a local Ray is started
and the trial's resources are checked against the Ray the sweep runs on.
`sketchtune.train` runs `checks.check_environment` too: both CLIs that train share one step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import fs
from .checks import check_environment, check_train
from .cluster import check_address, check_resources, start_ray
from .config import SweepConfig, TrainConfig, search_max_epochs, with_train_overrides
from .errors import ConfigError
from .planner import Candidate, probe_values
from .prepare import Tables, prepare_data, read_tables
from .pseudo import ensemble_json, read_fold_weights

__all__ = ["Preflight", "check_sweep", "image_sizes", "preflight"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preflight:
    """What the checks found that later steps use."""

    fixed: list[Candidate]  # the YAML's `candidates`, validated
    image_sizes: list[int]  # decoded into the image cache before any trial
    slots: int  # trials that fit the Ray cluster at once
    tables: Tables  # the validated CSVs and folds, handed to every trial
    started_ray: bool  # this call started or joined Ray (the sweep disconnects at its end)


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
    # The scheduler clamps the warm-up to epochs - 1 (optim.build_scheduler): with 1 epoch
    # there is none, and nothing for the grace period to fall within.
    warmup = min(cfg.train.sched.warmup_epochs, search_max_epochs(cfg) - 1)
    if cfg.search.enabled and cfg.search.asha and cfg.search.space and \
            cfg.search.grace_period <= warmup:
        _log.warning("%s: search.grace_period=%d is within the %d warm-up epoch(s): ASHA will "
                     "compare trials before their learning rate has warmed up",
                     where, cfg.search.grace_period, warmup)
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


def _probe_trains(cfg: SweepConfig, fixed: list[Candidate]) -> list[TrainConfig]:
    """The base, the fixed candidates, and the base with each value of a `choice` of
    `model.name` or `model.pretrained` and each end of an `img_size` dimension."""
    trains = [cfg.train, *(c.train for c in fixed)]
    for key in ("model.name", "model.pretrained", "img_size"):
        spec = cfg.search.space.get(key) if cfg.search.enabled else None
        if spec is not None:
            trains += [with_train_overrides(cfg.train, {key: int(v) if key == "img_size" else v},
                                            f"search.space[{key!r}]")
                       for v in probe_values(spec)]
    return trains



def preflight(cfg: SweepConfig, where: str = "config", *, quiet: bool = False) -> Preflight:
    """Run every check (see the module's docstring); join a cluster before the data is
    written, start a local Ray after.

    Raises ConfigError, DataError, ModelError or TrackingError with one line naming `where`
    or the file at fault; a Ray already initialised in this process is used as it is.
    """
    import ray

    from .tracking import check_tracking

    fixed = check_sweep(cfg, where)
    check_environment(cfg, _probe_trains(cfg, fixed), where)
    check_tracking(cfg.tracking_uri, where)
    if cfg.pseudo.enabled and fs.is_file(ensemble_json(cfg)):
        read_fold_weights(ensemble_json(cfg))  # one line for a broken file, before any write
    joining = not ray.is_initialized()
    if joining:
        check_address(cfg)
        if cfg.ray.address:  # a cluster is joined before anything is written; a local Ray
            start_ray(cfg, quiet)  # (it writes files of its own) once the data is good
    # Validate the CSVs, make the folds and decode the images once, here, before any trial:
    # every trial then reads the same folds file and memory-maps the same cache.
    try:
        sizes = image_sizes(cfg, fixed)
        tables = read_tables(cfg)
        for size in sizes:
            prepare_data(cfg, size, progress=not quiet, tables=tables)
    except BaseException:
        if joining and cfg.ray.address:
            ray.shutdown()  # leave the cluster as this call found it
        raise
    if joining and not cfg.ray.address:
        start_ray(cfg, quiet)
    return Preflight(fixed, sizes, check_resources(cfg), tables, joining)
