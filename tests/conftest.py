"""Shared fixtures: one tiny demo data set per test session, tiny CPU sweep configs, and one
finished sweep that the tests which only look at a sweep's result share."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from filelock import FileLock

from sketchtune.config import SweepConfig, apply_overrides, load_config
from sketchtune.demo import make_demo

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MINIMAL_CONFIG_MARKER = "<!-- minimal-config -->"

# Small enough that one fold of test_convnext at 32 px trains in a few seconds on 2 cores,
# big enough (5 classes x 40) that five stratified folds have 8 rows per class to learn from.
DEMO = {"classes": 5, "per_class": 40, "test_per_class": 6, "size": 32, "seed": 0}


@contextlib.contextmanager
def _shared(tmp_path_factory, name: str) -> Iterator[Path]:
    """A folder every pytest-xdist worker of this run shares (beside each one's basetemp), held
    under a file lock while the caller makes what goes in it. Without xdist, this run's own."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    with FileLock(f"{folder}.lock"):
        folder.mkdir(exist_ok=True)
        yield folder


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    with _shared(tmp_path_factory, "demo") as folder:
        make_demo(folder / "data", **DEMO)  # a finished one is kept as it is
    return folder / "data"


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
    return apply_overrides(cfg, overrides)


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

    with _shared(tmp_path_factory, "mlflow") as folder:
        db = folder / "mlflow.db"
        if not db.exists():
            MlflowClient(f"sqlite:///{db}").search_experiments()  # the schema migrations
    return db


@pytest.fixture
def mlflow_db(_mlflow_template, tmp_path) -> Path:
    """`tmp_path/mlflow.db` (where tiny_config_dict tracks) as an empty MLflow store, copied
    from one made once per session.

    Creating a sqlite store runs MLflow's schema migrations, seconds each time; the end-to-end
    sweeps and the callback and ensemble tests that use this prove what they log, not that a
    store can be created. The first run (no database yet) stays proven by the tests that do
    not use it (tests/test_tracking.py, the `done` fixture of tests/test_ensemble_cli.py, and
    the subprocess sweeps of tests/test_reliability.py).
    """
    db = tmp_path / "mlflow.db"
    shutil.copyfile(_mlflow_template, db)
    return db


def readme_minimal_config() -> str:
    """The fenced YAML block right after the README's minimal-config marker."""
    text = README.read_text()
    assert text.count(MINIMAL_CONFIG_MARKER) == 1, \
        f"README.md needs exactly one {MINIMAL_CONFIG_MARKER} line"
    after = text.split(MINIMAL_CONFIG_MARKER, 1)[1]
    m = re.match(r"\s*```yaml\n(.*?)\n```", after, re.S)
    assert m, f"README.md: no ```yaml block right after {MINIMAL_CONFIG_MARKER}"
    return m.group(1)


@dataclass(frozen=True)
class FinishedSweep:
    """`python -m sketchtune.sweep <path> --quiet --set ...` run to its end, once a session."""

    cfg: SweepConfig  # the config as the sweep loaded it (the README's, with `argv`'s --set)
    path: Path  # the YAML: the README's minimal config, as a user would save it
    argv: list[str]
    rc: int  # main()'s exit status
    out: str  # what it printed on stdout (the summary table and the hints)
    err: str


@pytest.fixture(scope="session")
def finished_sweep(demo_dir, _mlflow_template, tmp_path_factory) -> FinishedSweep:
    """One tiny sweep for every test that only looks at a finished sweep (the tests that kill,
    fault or refuse a sweep run their own): the README's minimal config, shrunk to timm's
    test models on the session's demo data, through the CLI's main() in this process.

    Its shape serves each of them: a search over both backbones and the learning rate on fold
    0 (3 trials, ASHA rungs at epochs 1 and 2), then cv of the top config per backbone and of
    two fixed candidates on both folds (tests/test_sweep.py's smoke test,
    tests/test_mlflow_ui.py, tests/test_readme.py). Read-only for them: a test that changes
    the sweep's folders or its MLflow store needs a sweep of its own.
    """
    root = tmp_path_factory.mktemp("finished_sweep")
    path = root / "my_sketches.yaml"
    path.write_text(readme_minimal_config())
    shutil.copyfile(_mlflow_template, root / "mlflow.db")  # see mlflow_db
    # Only what the test machine needs: the session's demo data instead of the user's, tiny
    # CPU models without downloads, two folds, and outputs under `root`.
    overrides = [
        f"data.train_csv={demo_dir / 'train.csv'}",
        f"data.test_csv={demo_dir / 'test.csv'}",
        f"data.folds_csv={root / 'folds.csv'}",
        f"data.cache_dir={demo_dir.parent / 'cache'}",
        "data.num_workers=0",
        "data.n_folds=2",
        "train.model.name=test_convnext",
        "train.model.pretrained=false",
        "train.img_size=32",
        # Two epochs: a search trial can be cut by ASHA at epoch 1 or run to its last rung.
        "train.epochs=2",
        "train.optim.lr=3e-3",
        "train.sched.warmup_epochs=0",
        "search.num_samples=3",
        "search.grace_period=1",
        "search.space.model.name.values=[test_convnext, test_resnet]",
        # Fixed candidates beside the search's choices: cv trains exactly 2 x 2 folds of them.
        "candidates=[{}, {optim.lr: 1.0e-3}]",
        "resources={cpu: 1, gpu: 0}",
        f"storage_path={root / 'sweeps'}",
        f"tracking_uri=sqlite:///{root / 'mlflow.db'}",
    ]
    argv = [str(path), "--quiet"]
    for o in overrides:
        argv += ["--set", o]
    from sketchtune.sweep import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return FinishedSweep(load_config(path, overrides), path, argv, rc, out.getvalue(),
                         err.getvalue())


# With pytest-xdist (scripts/test.sh), a session- or module-scoped fixture is made once per
# worker that runs a test needing it. So the tests of the shared sweep go to one worker, and so
# do those of a module that shares a module-scoped fixture (a cluster, a server, a data set)
# (`--dist loadgroup`). The slow tests are sent first: the quick ones then fill in around them,
# instead of one worker finishing a long test alone at the end. First: xdist's own hook reads
# the groups.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "finished_sweep" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("finished_sweep"))
        elif any(d.scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values()
                 for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
