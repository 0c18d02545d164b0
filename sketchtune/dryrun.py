"""The sweep's plan before it runs (`sweep --dry-run`): stages, trials, epochs, resources, disk."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from .cli import size_text
from .config import SweepConfig, TrainConfig, search_max_epochs
from .errors import first_line
from .planner import Candidate, cv_candidates, probe_values
from .preflight import check_sweep, image_sizes
from .store import PredictionStore

__all__ = ["DataShape", "describe_plan", "model_params"]

# A Ray checkpoint holds the weights, the optimizer state (AdamW: two moments, as large as the
# weights each) and the best epoch's weights: about four times the float32 model.
CHECKPOINT_FACTOR = 4


@dataclass(frozen=True)
class DataShape:
    """Row and class counts from the CSVs, None where they cannot be read cheaply."""

    n_train: int | None
    n_test: int | None
    classes: int | None
    note: str  # why a count is unknown ("" when all are known)


def data_shape(cfg: SweepConfig) -> DataShape:
    """Counts from a plain read of the two CSVs; nothing is validated or written."""
    import pandas as pd

    notes = []
    n_train = classes = n_test = None
    try:
        targets = pd.read_csv(cfg.data.train_csv, usecols=["target"])["target"]
        n_train = len(targets)
        if n_train and pd.api.types.is_integer_dtype(targets):
            classes = int(targets.max()) + 1  # as the trainer counts them: targets 0..C-1
    except (OSError, ValueError) as err:  # missing file, no `target` column, not a CSV
        notes.append(_why(cfg.data.train_csv, err))
    try:
        n_test = len(pd.read_csv(cfg.data.test_csv, usecols=[0]))
    except (OSError, ValueError) as err:
        notes.append(_why(cfg.data.test_csv, err))
    return DataShape(n_train, n_test, classes, "; ".join(notes))


def _why(path: Path, err: Exception) -> str:
    return f"{path} not found" if isinstance(err, FileNotFoundError) else \
        f"{path}: {first_line(err, 80)}"


@functools.lru_cache(maxsize=64)
def model_params(name: str, num_classes: int | None, img_size: int) -> int | None:
    """Parameters of a timm model, built on the meta device (no memory, no download).

    `num_classes` None keeps timm's default head. None when timm cannot build it.
    """
    import timm
    import torch

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        with torch.device("meta"):
            try:  # transformers take img_size (position embeddings); conv nets reject it
                model = timm.create_model(name, pretrained=False, img_size=img_size, **kwargs)
            except TypeError:
                model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception:  # a model that will not build on meta: say unknown, plan the rest
        return None
    return sum(p.numel() for p in model.parameters())


def _folds_in_store(store: PredictionStore, train: TrainConfig, n_folds: int) -> int:
    """Folds of `train` in the store, as `plan_cv_jobs` counts them (every prediction set
    there), from the files there (so a huge n_folds costs nothing)."""
    return sum(1 for fold in store.trained_folds(train) if fold < n_folds)


def _slots(cfg: SweepConfig) -> tuple[int, str]:
    """Trials that fit this machine at once, and the counts it was worked out from."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = torch.cuda.device_count()  # NVML: no CUDA context is made
    r = cfg.resources
    slots = int((cpus or 1) // r.cpu)
    if r.gpu > 0:
        slots = min(slots, int(gpus // r.gpu))
    if cfg.ray.max_concurrent_trials is not None:
        slots = min(slots, cfg.ray.max_concurrent_trials)
    return slots, f"{cpus} CPU(s), {gpus} GPU(s) here"


def _search_backbones(cfg: SweepConfig) -> list[str]:
    spec = cfg.search.space.get("model.name")
    return [str(v) for v in probe_values(spec)] if spec is not None and spec.type == "choice" \
        else [cfg.train.model.name]


def describe_plan(cfg: SweepConfig, where: str = "config") -> str:
    """The plan of `run_sweep(cfg)`, as text; it reads the config and CSVs, writes nothing.

    The config is checked as pre-flight checks it (search space and fixed candidates against
    TrainConfig and timm), so an error is the same one line; the data, Ray and MLflow are not
    touched. Raises ConfigError or ModelError naming `where`.
    """
    fixed = check_sweep(cfg, where)
    data = data_shape(cfg)
    store = PredictionStore(cfg.sweep_dir)
    k = cfg.data.n_folds
    searching = cfg.search.enabled and bool(cfg.search.space)
    lines = [f"sweep {cfg.name!r}: plan of {where} (dry run: nothing was written)"]

    known = f"{data.n_train} train rows, {data.classes} classes, {data.n_test} test rows"
    lines.append("data: " + known.replace("None", "unknown")
                 + (f" (unknown: {data.note})" if data.note else ""))

    n_search = 0
    if searching:
        s = cfg.search
        n_search = s.num_samples
        asha = (f"ASHA may stop a trial from epoch {s.grace_period}, keeping the top "
                f"1/{s.reduction_factor:g} at each rung" if s.asha else "no early stopping")
        lines.append(f"stage search: {n_search} trial(s) on fold {s.fold}, up to "
                     f"{search_max_epochs(cfg)} epoch(s) each; {asha}; dimensions: "
                     f"{', '.join(s.space)}")

    if searching:
        backbones = _search_backbones(cfg)
        top = cfg.search.top_k_per_backbone * len(backbones)
        upper = (top + len(fixed)) * k
        lines.append(
            f"stage cv: at most {upper} trial(s): up to {cfg.search.top_k_per_backbone} "
            f"config(s) per backbone x {len(backbones)} backbone(s) (search.top_k_per_backbone)"
            f" + {len(fixed)} fixed candidate(s), x {k} folds; fewer when a search trial "
            f"reached its last epoch (it is already fold {cfg.search.fold}) or a fold is "
            "in the store")
        cands: list[Candidate] = fixed
        n_cv = upper
    else:
        cands = cv_candidates(cfg, None, fixed)
        have = sum(_folds_in_store(store, c.train, k) for c in cands)
        n_cv = len(cands) * k - have
        lines.append(f"stage cv: {n_cv} trial(s): {len(cands)} candidate(s) x {k} folds"
                     + (f", {have} fold(s) already in the store" if have else "")
                     + " (no search: search.enabled is off or search.space is empty)")
    epochs = max([search_max_epochs(cfg), *(c.train.epochs for c in cands)])
    lines.append(f"epochs per trial: at most {epochs}; all trials: {n_search + n_cv}")

    r = cfg.resources
    slots, here = _slots(cfg)
    lines.append(f"resources per trial: {r.cpu:g} CPU, {r.gpu:g} GPU")
    if cfg.ray.address:
        lines.append(f"concurrency: set by the Ray cluster at {cfg.ray.address!r} ({here}: "
                     f"{slots} at once)")
    elif slots < 1:
        lines.append(f"concurrency: none: a trial does not fit this machine ({here})")
    else:
        lines.append(f"concurrency: {slots} trial(s) at once ({here}"
                     + (f", ray.max_concurrent_trials={cfg.ray.max_concurrent_trials}"
                        if cfg.ray.max_concurrent_trials else "") + ")")
    lines += _disk_lines(cfg, data, fixed, n_search + n_cv)
    return "\n".join(lines)


def _disk_lines(cfg: SweepConfig, data: DataShape, fixed: list[Candidate],
                trials: int) -> list[str]:
    sizes = image_sizes(cfg, fixed)
    names = sorted({*_search_backbones(cfg), cfg.train.model.name,
                    *(c.backbone for c in fixed)})
    params = {n: model_params(n, data.classes, max(sizes)) for n in names}
    head = "" if data.classes else " (timm's default head: classes unknown)"
    out = ["disk (estimated):"]
    for n, p in params.items():
        out.append(f"  model {n}: " + (f"{p / 1e6:.1f} M parameters, {size_text(4 * p)} float32"
                                       if p else "size unknown (timm cannot build it here)")
                   + head)
    known = [p for p in params.values() if p]
    big = 4 * max(known) if known else None
    ckpt = CHECKPOINT_FACTOR * big if big else None
    out.append(f"  Ray checkpoints: ~{CHECKPOINT_FACTOR}x the model per trial, "
               f"{size_text(ckpt)} each for the largest; up to "
               f"{size_text(ckpt * trials if ckpt else None)} for {trials} trial(s)")
    k = cfg.data.n_folds
    if data.n_train is not None and data.n_test is not None and data.classes:
        probs = (data.n_train / k + data.n_test) * data.classes * 4
        per_fold = probs + (big if cfg.save_weights and big else 0)
        weights = (f" + weights {size_text(big)}" if cfg.save_weights else
                   " (save_weights off)")
        out.append(f"  prediction store per fold: probabilities (n_val + n_test) x C x 4 B = "
                   f"{size_text(probs)}{weights}; per candidate ({k} folds): "
                   f"{size_text(per_fold * k)}")
    else:
        out.append("  prediction store per fold: unknown (row or class counts unknown)")
    for s in sizes:
        n = None if data.n_train is None or data.n_test is None else data.n_train + data.n_test
        b = None if n is None else n * s * s * 3
        out.append(f"  image cache at {s} px: (train + test) x {s} x {s} x 3 B = {size_text(b)} "
                   f"under {_cache_dir(cfg)}")
    spec = cfg.search.space.get("img_size")
    if spec is not None and spec.type != "choice":
        out.append("  image caches: one more per img_size the search samples from its range")
    return out


def _cache_dir(cfg: SweepConfig) -> Path:
    return Path(cfg.data.cache_dir or cfg.data.train_csv.parent / ".cache")
