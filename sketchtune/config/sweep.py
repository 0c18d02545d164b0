"""The whole sweep (`SweepConfig`): data, the base candidate, search, resources, Ray, MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from ..fs import URI
from .data import DataConfig
from .fields import Bool, Float, Int, StorageLocation, Strict
from .pseudo import PseudoConfig
from .search import SearchConfig, dimension_problem
from .train import TrainConfig

__all__ = ["RayConfig", "ResourcesConfig", "SweepConfig", "address_problem", "search_max_epochs"]


class ResourcesConfig(Strict):
    """What each trial asks Ray for; Ray runs as many trials at once as these fit."""

    cpu: Float = Field(
        1.0, gt=0.0,
        description="CPUs per trial (Ray sets a trial's OMP_NUM_THREADS to it unless already "
        "set). 1: "
        "one trial per core on a CPU machine, the steadiest on a small one "
        "(benchmarks/RESULTS-sweep.md).",
    )
    gpu: Float = Field(
        0.0, ge=0.0,
        description="GPUs per trial; a fraction packs small models onto one GPU (a scheduling "
        "count only: size it by memory). 0: the demo runs on a CPU.",
    )


def address_problem(address: str) -> str | None:
    """Why `address` is not one Ray can join (`auto`, HOST:PORT, ray://HOST:PORT), or None.

    Ray's own parser fails on the rest only at `ray.init`, after pre-flight, as a ValueError
    ("Invalid address format: localhost") that is no user error of ours.
    """
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if (host and "/" not in host and not any(c.isspace() for c in address)
            and port.isdigit() and 0 < int(port) < 65536):
        return None
    return ("expected null, 'auto' or HOST:PORT (e.g. 10.0.0.5:6379, the port "
            "`ray start --head` printed)")


def _ray_address(address: str | None) -> str | None:
    if address is not None and (problem := address_problem(address)):
        raise ValueError(problem)
    return address


class RayConfig(Strict):
    """How the sweep starts or joins Ray, and how Tune runs its trials."""

    address: Annotated[str | None, AfterValidator(_ray_address)] = Field(
        None,
        description="null: a fresh local Ray of the sweep's own; `auto`: join the cluster "
        "`ray start --head` recorded on this machine (or `$RAY_ADDRESS`), refused when there "
        "is none rather than joining any Ray process found; or `HOST:PORT`. null rather than "
        "Ray's own default, which would join whatever cluster this machine last ran, even a "
        "dead one.",
    )
    max_concurrent_trials: Int | None = Field(
        None, ge=1,
        description="At most this many trials at once. null: as many as `resources` fit.",
    )
    max_failures: Int = Field(
        2, ge=0,
        description="Times Ray retries a failed trial from its last checkpoint. 2: rides out a "
        "crashed process or a lost node without looping on a bug.",
    )
    reuse_actors: Bool = Field(
        True,
        description="Run the next trial in the process of the last one. On: it saves ~5 s of "
        "start-up and imports per trial (benchmarks/RESULTS-sweep.md), and every trial "
        "rebuilds all it uses anyway; turn off if a backbone leaks memory between trials.",
    )
    verbose: Int = Field(
        1, ge=0, le=3,
        description="Ray Tune's verbosity: 0 silent, 1 default (its status table), 2 verbose "
        "(3: Tune's old output's most detailed); --quiet sets 0. 1: Tune's own default.",
    )


class SweepConfig(Strict):
    """A sweep: the data, the base training config, the search, Ray, MLflow and the ensemble."""

    name: str = Field(
        # Not only dots: "." would be storage_path itself and ".." the folder above it.
        "demo", pattern=r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$",
        description="The sweep's name: its folder under `storage_path` and its MLflow "
        "experiment. Default: the demo's.",
    )
    storage_path: StorageLocation = Field(
        Path("sweeps"),
        description="Where sweeps live: Ray's trials and checkpoints and the prediction store "
        "under `<storage_path>/<name>`. A local folder; on a cluster a folder every node "
        "mounts (NFS) or any URI `pyarrow.fs` opens (`s3://bucket/sweeps`, `gs://...`): "
        "credentials and endpoint the standard way (`AWS_ACCESS_KEY_ID`, ..., "
        "`AWS_ENDPOINT_URL` for an S3-compatible server, or `?endpoint_override=host:port"
        "&scheme=http` in the URI), forwarded to Ray's workers; checked with a probe write "
        "before anything starts. MLflow's artifacts go to the same bucket when its server "
        "is started with `--default-artifact-root s3://bucket/mlflow` (and "
        "`MLFLOW_S3_ENDPOINT_URL` for an S3-compatible endpoint).",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; an `http://` server for a team. null: "
        "`$MLFLOW_TRACKING_URI` when it is set (as MLflow itself reads it), else "
        "`sqlite:///mlflow.db` in the working directory the command runs from, with artifacts "
        "in `mlruns/` beside it, MLflow's own default, so a plain `mlflow ui` there shows every "
        "sweep (made absolute at load: Ray moves each trial into its own directory).",
    )
    save_weights: Bool = Field(
        True,
        description="Keep each fold's best weights (safetensors) beside its predictions, for "
        "predicting new images later. A b36 model is ~400 MB a fold: turn off to save disk.",
    )
    data: DataConfig = Field(DataConfig(), description="The data.")
    train: TrainConfig = Field(TrainConfig(), description="The base candidate that `search` "
                               "and `candidates` override.")
    search: SearchConfig = Field(SearchConfig(), description="Stage search.")
    candidates: list[dict[str, Any]] = Field(
        [],
        description="Fixed candidates: each a map of dotted overrides of `train` (e.g. "
        "`{model.name: ..., optim.lr: ...}`), trained on every fold besides the search's "
        "choices. Empty: only the search's.",
    )
    resources: ResourcesConfig = Field(ResourcesConfig(), description="Per-trial resources.")
    ray: RayConfig = Field(RayConfig(), description="Ray and Tune.")
    pseudo: PseudoConfig = Field(PseudoConfig(), description="Stage pseudo.")
    ensemble: dict[str, Any] = Field(
        {},
        description="The ensemble search's settings (`python -m ensemble_search.optimize`), "
        "checked when it reads them (the `ensemble.*` keys below). The sweep never reads them.",
    )

    @model_validator(mode="after")
    def _search_fits_train(self) -> SweepConfig:
        # A dimension whose draws do not fit its field's type would pass the probe of its ends
        # (pydantic takes 16.0 for an int) and fail the first trial; say so here instead.
        for key, spec in self.search.space.items():
            problem = dimension_problem(key, spec)
            if problem:
                raise ValueError(f"search.space[{key!r}]: {problem}")
        s = self.search
        if s.enabled and s.asha and s.space:
            max_t = search_max_epochs(self)
            if s.grace_period > max_t:
                where = ("train.epochs" if "epochs" not in s.space
                         else "train.epochs and search.space['epochs']")
                raise ValueError(
                    f"search.grace_period={s.grace_period} is above the {max_t} epoch(s) a "
                    f"search trial can run ({where}; ASHA's max_t): lower search.grace_period "
                    "or raise train.epochs")
        return self

    @property
    def sweep_dir(self) -> Path | URI:
        return self.storage_path / self.name


def search_max_epochs(cfg: SweepConfig) -> int:
    """The most epochs a search trial can run: the base's, or the space's largest."""
    spec = cfg.search.space.get("epochs")
    if spec is None:
        return cfg.train.epochs
    ends = list(spec.values or []) if spec.type == "choice" else [spec.low, spec.high]
    return max([cfg.train.epochs, *(int(v) for v in ends)])

