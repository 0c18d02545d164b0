"""The Ray the sweep runs on: a fresh local Ray, or a join of `ray.address`; its trial slots."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from .allocator import MALLOC_ENV, MALLOC_SWITCH
from .config import SweepConfig, address_problem
from .errors import ConfigError, first_line, root_cause
from .fs import CLOUD_ENV

__all__ = ["check_address", "check_resources", "pythonpath", "start_ray", "worker_env"]

# Set here, before anything imports Ray, which reads them at import or Tuner start:
# the classic table reporter (CLIReporter) honours our column choice; Ray's newer output
# engine ignores `progress_reporter`.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Keeping one checkpoint per trial makes Tune snapshot its state after each checkpoint, which
# is what resume needs; its warning about that would repeat every few seconds.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _address(cfg: SweepConfig) -> str:
    # No address: always a fresh Ray of our own ("local"); a plain ray.init() would join
    # whatever cluster this machine last ran, even a dead one.
    return cfg.ray.address or "local"


def _auto_address(cfg: SweepConfig) -> str:
    """The `host:port` that `auto` stands for: RAY_ADDRESS, else the cluster `ray start` last
    recorded on this machine. Ray itself would also fall back to any Ray process it finds
    (another user's local Ray, gone when that user's script ends); we refuse that instead."""
    from ray._private.utils import read_ray_address

    found = os.environ.get("RAY_ADDRESS") or read_ray_address()
    if not found or found == "auto":
        raise ConfigError("ray.address='auto': no Ray cluster was started on this machine "
                          "(`ray start --head` records one); start it, or leave ray.address "
                          "unset for a local Ray")
    return found


def check_address(cfg: SweepConfig) -> None:
    """The address must answer now: Ray itself retries an unreachable head for minutes, one
    quick TCP try says it at once. `auto` is resolved first (`_auto_address`); a local Ray is
    checked against this machine's CPUs, as `check_resources` does once Ray runs."""
    address = _address(cfg)
    if address == "local":
        cpus = os.cpu_count() or 1
        if cfg.resources.cpu > cpus:
            raise ConfigError(f"resources.cpu={cfg.resources.cpu}: this machine has {cpus} "
                              "CPU(s), so no trial could ever start; lower resources.cpu or "
                              "join a cluster (ray.address)")
        return
    if address == "auto":
        address = _auto_address(cfg)
        # RAY_ADDRESS is read here, not with the config: the same check, naming it.
        if problem := address_problem(address):
            raise ConfigError(f"ray.address='auto' resolved to {address!r} (RAY_ADDRESS or "
                              f"`ray start`'s record): {problem}")
    host, _, port = address.rpartition(":")
    if "://" in address:  # Ray Client (ray://): ray.init checks it
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        why = err.strerror or err
        raise ConfigError(f"ray.address={address!r}: nothing answers there ({why}); start "
                          "the head with `ray start --head --port=...`") from None
    if _refuses_token(address):
        mode = os.environ.get("RAY_AUTH_MODE") or "unset"
        raise ConfigError(
            f"ray.address={cfg.ray.address!r}: the cluster at {address} uses token "
            f"authentication and refused this driver (RAY_AUTH_MODE is {mode} here): run the "
            "sweep with RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token or "
            "RAY_AUTH_TOKEN, as on its nodes")


# One request to the head's GCS, in a process of its own: Ray's C++ client prints a line per
# try, and a port that is not a GCS keeps it waiting 40 s. Exit 3: the token was refused.
_PROBE = """import sys
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
try:
    GcsClient(address=sys.argv[1])
except AuthenticationError:
    sys.exit(3)
"""


def _refuses_token(address: str) -> bool:
    """Whether the head refuses this process's token (`RAY_AUTH_MODE`, `RAY_AUTH_TOKEN`,
    ~/.ray/auth_token), in about a second; `ray.init` retries for 20 s, printing a line each
    time, and then names no cause."""
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, address], capture_output=True,
                               timeout=15)
    except subprocess.TimeoutExpired:
        return False  # not a token problem: ray.init says what it is
    return probe.returncode == 3


def pythonpath() -> str:
    """PYTHONPATH for Ray's workers: this source tree first, then the driver's own."""
    root = str(Path(__file__).resolve().parent.parent)
    extra = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{extra}" if extra else root


def worker_env() -> dict[str, str]:
    """The environment every Ray worker of this job starts with (Ray's runtime_env).

    PYTHONPATH, the cloud storage's credentials and endpoint (`fs.CLOUD_ENV`), and the
    driver's own malloc choices (MALLOC_*_ or SKETCHTUNE_MALLOC=default), which glibc and the
    trainer read in the worker: on a cluster, workers are children of `ray start`, not of the
    driver, and would not inherit them.
    """
    env = {"PYTHONPATH": pythonpath()}
    env.update({k: os.environ[k] for k in (*MALLOC_ENV, MALLOC_SWITCH) if k in os.environ})
    # The cloud storage's credentials and endpoint (AWS_ENDPOINT_URL, ...): a trial writes
    # the prediction store there itself, and Ray's worker uploads its checkpoints.
    env.update({k: os.environ[k] for k in CLOUD_ENV if k in os.environ})
    return env


def start_ray(cfg: SweepConfig, quiet: bool) -> None:
    """Start a local Ray or join `ray.address` (checked by `check_address` first)."""
    import ray

    address = _address(cfg)
    if address == "auto":
        # The address pre-flight checked. Given `auto`, ray.init would look again, and with
        # several Ray instances on the machine (a second head, another user's) it joins the
        # one started last ("Found multiple active Ray instances"), not the recorded one.
        address = _auto_address(cfg)
    kwargs: dict[str, Any] = {"include_dashboard": False} if address == "local" else {}
    if quiet:
        # Ray's notice that token authentication is on is advice, not a problem (warnings and
        # errors stay on); it is logged by the driver while Ray starts.
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    try:
        ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING,
                 # Trials import sketchtune from the driver's source tree, also when it is not
                 # pip-installed (a worker's working directory is its trial's).
                 runtime_env={"env_vars": worker_env()}, **kwargs)
    except (ConnectionError, RuntimeError) as err:
        # A head answered check_address: the cause is in Ray's chain, not a missing head.
        raise ConfigError(f"ray.address={cfg.ray.address!r}: cannot start or join Ray "
                          f"({first_line(root_cause(err))}); see `ray status`") from None


def check_resources(cfg: SweepConfig) -> int:
    """A trial's resources must fit the cluster; returns how many trials fit at once (>= 1)."""
    import ray

    have = ray.cluster_resources()
    for name, want in (("CPU", cfg.resources.cpu), ("GPU", cfg.resources.gpu)):
        if want > have.get(name, 0):
            raise ConfigError(
                f"resources.{name.lower()}={want}: the Ray cluster has {have.get(name, 0):g} "
                f"{name}(s) in all, so no trial could ever start")
    return max(1, int(have.get("CPU", 1) // cfg.resources.cpu))
