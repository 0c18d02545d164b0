"""Synthetic prediction stores and sweep configs for the ensemble tests (no training)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sketchtune.store import PredictionStore
from tests.synthetic_probs import softmax


def make_probs(rng: np.random.Generator, skills: list[float], n: int, c: int,
               targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M, N, C) float32 softmax probabilities; candidate j's true-class logit gets +skills[j]."""
    y = rng.integers(0, c, n) if targets is None else targets
    logits = rng.normal(size=(len(skills), n, c))
    logits[:, np.arange(n), y] += np.asarray(skills)[:, None]
    return softmax(logits), y


@dataclass
class Sweep:
    config: Path  # the sweep YAML
    sweep_dir: Path
    store: PredictionStore
    folds_csv: Path
    test_csv: Path
    keys: np.ndarray  # (N,)
    targets: np.ndarray  # (N,)
    folds: np.ndarray  # (N,)
    probs: np.ndarray  # (M, N, C) OOF
    test_probs: np.ndarray  # (M, n_folds, n_test, C)
    ids: list[str]
    test_keys: np.ndarray  # (n_test,) test.csv's image_path, the order test_probs follow


def make_sweep(tmp: Path, skills: tuple[float, ...] = (2.0, 1.0, 0.5), n: int = 60, c: int = 4,
               n_folds: int = 3, n_test: int = 12, seed: int = 0, ensemble: str = "",
               write: bool = True) -> Sweep:
    """A sweep: folds file, test.csv, config YAML and one store candidate per skill."""
    rng = np.random.default_rng(seed)
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    keys = np.array([f"train/{i:04d}.png" for i in range(n)])
    y = np.arange(n) % c  # every class present
    folds = rng.permutation(np.arange(n) % n_folds)
    pd.DataFrame({"class_name": [f"c{t}" for t in y], "image_path": keys, "target": y}).to_csv(
        data / "train.csv", index=False)
    pd.DataFrame({"image_path": keys, "target": y, "fold": folds}).to_csv(data / "folds.csv",
                                                                        index=False)
    test_keys = np.array([f"test/{i:04d}.png" for i in range(n_test)])
    pd.DataFrame({"image_path": test_keys}).to_csv(data / "test.csv", index=False)
    probs, _ = make_probs(rng, list(skills), n, c, targets=y)
    test = softmax(rng.normal(size=(len(skills), n_folds, n_test, c)))
    cfg = tmp / "sweep.yaml"
    cfg.write_text(
        f"name: t\nstorage_path: {tmp / 'sweeps'}\ntracking_uri: sqlite:///{tmp / 'mlflow.db'}\n"
        f"data:\n  train_csv: {data / 'train.csv'}\n  test_csv: {data / 'test.csv'}\n"
        f"  folds_csv: {data / 'folds.csv'}\n  n_folds: {n_folds}\n"
        f"ensemble:\n  method: auto\n{ensemble}"
    )
    sweep_dir = tmp / "sweeps" / "t"
    store = PredictionStore(sweep_dir)
    ids = [f"c{j:02d}abcdef" for j in range(len(skills))]
    sw = Sweep(cfg, sweep_dir, store, data / "folds.csv", data / "test.csv", keys, y, folds,
               probs, test, ids, test_keys)
    if write:
        for j in range(len(skills)):
            write_candidate(sw, j)
    return sw


def write_candidate(sw: Sweep, j: int, folds: list[int] | None = None,
                    probs: np.ndarray | None = None, test_probs: np.ndarray | None = None,
                    cid: str | None = None, backbone: str = "test_resnet.r160_in1k",
                    weights_file: str | None = None, test_keys: np.ndarray | None = None,
                    manifest: dict | None = None) -> str:
    """Write candidate j's folds (all by default) to the store, optionally with other arrays.

    weights_file: what each fold's manifest names as its saved weights (none are written).
    test_keys: the image_paths the test probabilities are for (default: test.csv's).
    manifest: more manifest fields (a view's `view`, `weights`, `base_candidate`).
    """
    p = sw.probs[j] if probs is None else probs
    n_folds = int(sw.folds.max()) + 1
    cid = cid or sw.ids[j]
    for k in range(n_folds) if folds is None else folds:
        rows = np.flatnonzero(sw.folds == k)
        sw.store.write_fold(
            cid, k, val_keys=sw.keys[rows], val_targets=sw.targets[rows], val_probs=p[rows],
            test_keys=sw.test_keys if test_keys is None else test_keys,
            test_probs=sw.test_probs[j, k] if test_probs is None else test_probs,
            manifest={"n_folds": n_folds, "best_epoch": 1,
                      "metrics": {"val_acc": 0.5, "val_loss": 1.0},
                      "config": {"model": {"name": backbone}}, "mlflow_run_id": None,
                      **({"weights_file": weights_file} if weights_file else {}),
                      **(manifest or {})},
        )
    return cid


def sweep_from_synthetic(tmp: Path, syn, ensemble: str = "") -> tuple[Sweep, np.ndarray]:
    """A sweep whose store holds `tests.synthetic_probs` predictions (known truth).

    Returns the sweep and the test labels (n_test,), in test.csv order.
    """
    m, k = syn.fold_test_probs.shape[:2]
    sw = make_sweep(tmp, skills=(1.0,) * m, n=len(syn.targets),
                    c=syn.oof_probs.shape[2], n_folds=k,
                    n_test=syn.fold_test_probs.shape[2], ensemble=ensemble, write=False)
    # The folds file and train.csv must carry the synthetic labels and folds.
    pd.DataFrame({"class_name": [f"c{t}" for t in syn.targets], "image_path": sw.keys,
                  "target": syn.targets}).to_csv(sw.folds_csv.parent / "train.csv", index=False)
    pd.DataFrame({"image_path": sw.keys, "target": syn.targets, "fold": syn.folds}).to_csv(
        sw.folds_csv, index=False)
    sw.targets, sw.folds = syn.targets, syn.folds
    sw.probs, sw.test_probs = syn.oof_probs, syn.fold_test_probs
    for j in range(m):
        write_candidate(sw, j)
    return sw, syn.test_targets
