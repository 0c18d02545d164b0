"""Shared fixtures: one tiny demo data set per test session and tiny CPU sweep configs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from sketchtune.config import SweepConfig, load_config
from sketchtune.demo import make_demo

# Small enough that one fold of test_convnext at 32 px trains in a few seconds on 2 cores,
# big enough (5 classes x 40) that five stratified folds have 8 rows per class to learn from.
DEMO = {"classes": 5, "per_class": 40, "test_per_class": 6, "size": 32, "seed": 0}


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    make_demo(out, **DEMO)
    return out


def tiny_config_dict(demo_dir: Path, root: Path, **overrides: Any) -> dict[str, Any]:
    """A sweep config that trains test_convnext at 32 px for 2 epochs, tracked under `root`."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "storage_path": str(root / "sweeps"),
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "data": {
            "train_csv": str(demo_dir / "train.csv"),
            "test_csv": str(demo_dir / "test.csv"),
            # Each test gets its own folds file; the image cache is shared by all.
            "folds_csv": str(root / "folds.csv"),
            "cache_dir": str(demo_dir.parent / "cache"),
            "n_folds": 5,
            "num_workers": 0,
        },
        "train": {
            "model": {"name": "test_convnext", "pretrained": False},
            "img_size": 32,
            "epochs": 2,
            "batch_size": 32,
            "optim": {"lr": 3e-3},
            "sched": {"warmup_epochs": 0},
        },
        "search": {"enabled": False},
        "resources": {"cpu": 1},
        "ray": {"verbose": 0, "max_failures": 1},
    }
    for dotted, value in overrides.items():
        cur = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def tiny_cfg(demo_dir, tmp_path):
    """Factory: tiny_cfg(**dotted_overrides) -> (SweepConfig, path of its YAML)."""

    def make(**overrides: Any) -> tuple[SweepConfig, Path]:
        path = write_config(tmp_path / "sweep.yaml", tiny_config_dict(demo_dir, tmp_path,
                                                                      **overrides))
        return load_config(path), path

    return make


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # creates it: the schema migrations
    return db


@pytest.fixture
def mlflow_db(_mlflow_template, tmp_path) -> Path:
    """`tmp_path/mlflow.db` (where tiny_config_dict tracks) as an empty MLflow store, copied
    from one made once per session.

    Creating a sqlite store runs MLflow's schema migrations, seconds each time; the end-to-end
    sweeps that use this prove what they log, not that a store can be created. The first run
    (no database yet) stays proven by the tests that do not use it (tests/test_tracking.py,
    tests/test_callback.py, and the subprocess sweeps of tests/test_reliability.py).
    """
    db = tmp_path / "mlflow.db"
    shutil.copyfile(_mlflow_template, db)
    return db
