"""The checks a trial shares with the sweep's pre-flight: a candidate's config, the machine.

`sketchtune.train` (one trial, no Ray) and `sketchtune.preflight` (the sweep) call these
before anything is written; each failure is one line naming the config file and the key.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from . import fs
from .config import ModelConfig, SweepConfig, TrainConfig, view_img_size
from .engine import select_device
from .errors import ConfigError, ModelError, StoreError, first_line
from .model import build_model, check_model_name, create_on_meta
from .optim import check_optimizer

__all__ = ["check_environment", "check_folder", "check_train", "check_trial", "check_weights"]


def check_trial(cfg: SweepConfig, fold: int, source: str) -> None:
    """What a trial can check without its data, before it writes anything; errors name `source`."""
    if not 0 <= fold < cfg.data.n_folds:
        raise ConfigError(f"{source}: --fold {fold}: must be in [0, {cfg.data.n_folds}) for "
                          f"data.n_folds={cfg.data.n_folds}")
    check_train(cfg.train, f"{source}: train")


def check_train(train: TrainConfig, where: str) -> None:
    """A candidate's backbone, optimizer and local weights file exist; errors name `where`."""
    check_model_name(train.model.name, where)
    check_optimizer(train.optim, where)
    w = train.model.weights_file
    if train.model.pretrained and w is not None and not Path(w).is_file():
        raise ConfigError(f"{where}.model.weights_file: {str(w)!r} not found; download the "
                          "weights there or set model.pretrained=false")


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

    if device is not None:
        select_device(device)  # ConfigError naming --device when it cannot work here
    # A local Ray sees this machine's GPUs only; a cluster's may have GPUs on other nodes,
    # which check_resources checks once Ray is joined.
    if cfg.resources.gpu > 0 and cfg.ray.address is None and not torch.cuda.is_available():
        raise ConfigError(f"resources.gpu={cfg.resources.gpu:g}: this machine has no CUDA GPU, "
                          "so no trial could ever start; set resources.gpu=0 or join a cluster "
                          "with GPUs (ray.address)")


def _check_img_size(name: str, img_size: int, where: str, view_size: int | None = None) -> None:
    """One forward pass at `img_size` on the meta device (no memory, no data): a backbone that
    downsamples past 1 px fails here in a second instead of in every trial. `view_size`: the
    model built for `img_size` must also take images of this size (the `scale` view)."""
    import torch

    size = view_size or img_size
    try:
        model = create_on_meta(name, img_size)
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"))
    except Exception as err:  # noqa: BLE001 - timm and torch raise many types for this
        if view_size:
            raise ConfigError(f"{where}.views: 'scale' predicts at {size} px, which {name!r} "
                              f"built for img_size={img_size} cannot take (a fixed position "
                              f"embedding?: {first_line(err, 100)}); leave 'scale' out for "
                              "this backbone") from None
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


def _check_storage(where: Path | fs.URI, field: str) -> None:
    """A local folder as `check_folder` checks it; a cloud one by a probe write (one line
    naming the URI for a missing bucket, bad credentials or an unreachable endpoint)."""
    if isinstance(where, Path):
        check_folder(where, field)
        return
    try:
        fs.check_writable(where, field)
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
    if fs.is_dir(folds):
        raise ConfigError(f"data.folds_csv: {str(folds)!r} is a folder, not a file; set "
                          "data.folds_csv to a file path")
    if not (folds.exists() if isinstance(folds, Path) else fs.is_file(folds)):
        _check_storage(folds.parent, "data.folds_csv")
    names = sorted({t.model.name for t in trains})
    sizes = sorted({t.img_size for t in trains})
    for name in names:
        for size in sizes:
            _check_img_size(name, size, f"{where}: train")
    for name, size in sorted({(t.model.name, t.img_size) for t in trains if "scale" in t.views}):
        _check_img_size(name, size, f"{where}: train", view_img_size("scale", size))
    seen = set()
    for t in trains:
        key = t.model.model_dump_json()
        if key not in seen:
            seen.add(key)
            check_weights(t.model, where)

