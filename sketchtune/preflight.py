"""Pre-flight: every check before anything is written or a trial starts, each a one-line error.

`preflight` (the sweep) runs them cheapest first: the config against TrainConfig (search
space and fixed candidates); the machine (`check_environment`: devices, writable folders,
each backbone at its image size, pretrained weights); the tracking store; the Ray address;
then the data (CSVs, folds, decoded-image caches, the first things written, only once all
else passed); then Ray is started or joined and the trial's resources checked against it.
`sketchtune.train` runs `check_environment` too, so both CLIs that train share one step.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import storage
from .cluster import check_address, check_resources, start_ray
from .config import (
    ConfigError,
    ModelConfig,
    SweepConfig,
    TrainConfig,
    search_max_epochs,
    with_train_overrides,
)
from .errors import first_line
from .model import ModelError, build_model, create_on_meta
from .planner import Candidate, probe_values
from .prepare import prepare_data
from .storage import StoreError
from .train import check_train

__all__ = ["Preflight", "check_environment", "check_folder", "check_sweep", "check_weights",
           "image_sizes", "preflight"]

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
    # The scheduler clamps the warm-up to epochs - 1 (engine.build_scheduler): with 1 epoch
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


def check_folder(path: Path, key: str) -> None:
    """`path` is a folder, or one can be made there: no file in the way, the parent writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {str(path)!r} is a file, not a folder; move it away or set "
                          f"{key} elsewhere")
    probe = path
    while not probe.exists() and probe != probe.parent:  # the nearest folder that exists
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}: {str(path)!r} cannot be made: {str(probe)!r} is a file; "
                          f"move it away or set {key} elsewhere")
    why = None if os.access(probe, os.W_OK | os.X_OK) else "is not writable"
    if why is None:
        # os.access says yes to root everywhere, also where nothing can be made (/proc, a
        # read-only mount seen through some file systems): one empty folder made and removed
        # there says it for sure, and leaves nothing behind.
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".sketchtune-probe-", dir=probe))
        except OSError as err:
            why = f"nothing can be made in it: {err.strerror or err}"
    if why is not None:
        raise ConfigError(f"{key}: {str(path)!r} cannot be written ({str(probe)!r} {why}); "
                          f"fix its permissions or set {key} elsewhere")


def _check_device(cfg: SweepConfig, device: str | None) -> None:
    import torch

    from .engine import select_device

    if device is not None:
        select_device(device)  # ConfigError naming --device when it cannot work here
    # A local Ray sees this machine's GPUs only; a cluster's may have GPUs on other nodes,
    # which check_resources checks once Ray is joined.
    if cfg.resources.gpu > 0 and cfg.ray.address is None and not torch.cuda.is_available():
        raise ConfigError(f"resources.gpu={cfg.resources.gpu:g}: this machine has no CUDA GPU, "
                          "so no trial could ever start; set resources.gpu=0 or join a cluster "
                          "with GPUs (ray.address)")


def _check_img_size(name: str, img_size: int, where: str) -> None:
    """One forward pass at `img_size` on the meta device (no memory, no data): a backbone that
    downsamples past 1 px fails here in a second instead of in every trial."""
    import torch

    try:
        model = create_on_meta(name, img_size)
        with torch.no_grad():
            model(torch.empty(1, 3, img_size, img_size, device="meta"))
    except Exception as err:  # noqa: BLE001 - timm and torch raise many types for this
        raise ConfigError(f"{where}.img_size={img_size} is too small for {name!r} (a forward "
                          f"pass at {img_size}x{img_size} px fails: {first_line(err, 120)}); "
                          "raise img_size") from None


def _hub_answers(endpoint: str, timeout: float = 5.0) -> str | None:
    """None when the hub answers an HTTP request (any status), else why not. urllib honours
    the proxy settings of the environment, as the hub client does."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as err:
        return first_line(getattr(err, "reason", err), 80)
    return None


def check_weights(model: ModelConfig, where: str, key: str = "train") -> None:
    """`pretrained` without a `weights_file`: the weights must be in the local cache or the hub
    must answer; the load is tried once here, which also downloads them once for every trial.
    Errors start with `where` (the config file) and name `key` (the section).

    The hub client retries an unreachable host for about a minute per trial and attempt; a
    local-cache load and one 5-second request say the same at once.
    """
    if not model.pretrained or model.weights_file is not None:
        return
    import huggingface_hub.constants as hub

    offline = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True  # the local cache only: no request, no retries
    try:
        build_model(model, 2)
        return
    except ModelError:
        pass
    finally:
        hub.HF_HUB_OFFLINE = offline
    why = "HF_HUB_OFFLINE is set" if offline else _hub_answers(hub.ENDPOINT)
    if why is not None:
        raise ModelError(f"{where}: {key}.model.pretrained=true: no weights for {model.name!r} "
                         f"in the local cache and no network to {hub.ENDPOINT} ({why}): set "
                         f"{key}.model.weights_file to a downloaded file, or "
                         f"{key}.model.pretrained=false")
    build_model(model, 2)  # downloads into the hub cache; ModelError names what failed


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


def _check_storage(where: Path | storage.URI, field: str) -> None:
    """A local folder as `check_folder` checks it; a cloud one by a probe write (one line
    naming the URI for a missing bucket, bad credentials or an unreachable endpoint)."""
    if isinstance(where, Path):
        check_folder(where, field)
        return
    try:
        storage.check_writable(where, field)
    except StoreError as err:
        raise ConfigError(str(err)) from None


def check_environment(cfg: SweepConfig, trains: list[TrainConfig], where: str, *,
                      device: str | None = None) -> None:
    """What the machine must offer before anything is written: `device` (the train CLI's
    --device) and the GPUs `resources.gpu` asks for; writable storage, cache and folds
    folders; each backbone at each image size; pretrained weights. Errors start with `where`.
    """
    _check_device(cfg, device)
    _check_storage(cfg.sweep_dir, "storage_path")
    check_folder(cfg.data.cache_dir, "data.cache_dir")
    folds = cfg.data.folds_csv
    if storage.is_dir(folds):
        raise ConfigError(f"data.folds_csv: {str(folds)!r} is a folder, not a file; set "
                          "data.folds_csv to a file path")
    if not (folds.exists() if isinstance(folds, Path) else storage.is_file(folds)):
        _check_storage(folds.parent, "data.folds_csv")
    names = sorted({t.model.name for t in trains})
    sizes = sorted({t.img_size for t in trains})
    for name in names:
        for size in sizes:
            _check_img_size(name, size, f"{where}: train")
    seen = set()
    for t in trains:
        key = t.model.model_dump_json()
        if key not in seen:
            seen.add(key)
            check_weights(t.model, where)


def preflight(cfg: SweepConfig, where: str = "config", *, quiet: bool = False) -> Preflight:
    """Run every check (see the module's docstring); start or join Ray last.

    Raises ConfigError, DataError, ModelError or TrackingError with one line naming `where`
    or the file at fault; a Ray already initialised in this process is used as it is.
    """
    import ray

    from .tracking import check_tracking

    fixed = check_sweep(cfg, where)
    check_environment(cfg, _probe_trains(cfg, fixed), where)
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
