"""The cluster recipe of the docs, run as written with real `ray start` processes: a head and a
second node on this machine (every address 127.0.0.1), token authentication on, and a sweep
that joins them.

Ray 2.60 turns token authentication on for `ray start --head` whenever a token exists, and a
node or a driver without the token cannot join. `ray stop` would stop every Ray on the machine,
so the cluster is stopped by its session instead: each `ray start` runs in a session of its own,
which every process it starts stays in.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import tiny_config_dict, write_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

# The recipe (docs), with {ip} and {port} to fill in. Each node runs with the cluster's token
# in ~/.ray/auth_token (made on the head by `ray get-auth-token --generate` and copied), or in
# RAY_AUTH_TOKEN as here, so that a test never touches the user's own token file.
HEAD = "RAY_AUTH_MODE=token ray start --head --port={port} --node-ip-address={ip}"
NODE = "RAY_AUTH_MODE=token ray start --address={ip}:{port} --node-ip-address={ip}"
SWEEP = "RAY_AUTH_MODE=token python -m sketchtune.sweep {config} --set ray.address={ip}:{port}"
# This machine only: one CPU per node, so that two trials at once must use both nodes.
SMALL = " --num-cpus=1 --disable-usage-stats"


@dataclass
class Recipe:
    """A running cluster made by the recipe's commands."""

    ip: str
    port: int
    env: dict[str, str]  # the token and RAY_TMPDIR, what every command of the recipe runs with
    sessions: list[int]  # the session id of each `ray start`: every process of the cluster

    def run(self, command: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], env=self.env, capture_output=True,
                              text=True, **kwargs)

    def nodes(self) -> list[dict]:
        """Ray's own view of the cluster's alive nodes (a driver that joins with the token)."""
        code = ("import json, ray; ray.init(address='{a}', logging_level='ERROR'); "
                "print(json.dumps([n for n in ray.nodes() if n['Alive']]))")
        done = self.run(f"RAY_AUTH_MODE=token python -c \"{code.format(a=self.address)}\"",
                        timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: str, env: dict[str, str]) -> int:
    """Run a `ray start` command in a session of its own; its session id."""
    proc = subprocess.Popen(["bash", "-c", command], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"{command}: {out[-3000:]}"
    return proc.pid  # a session leader: its pid is the session id


def _in_sessions(sessions: list[int]) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.getsid(int(name)) in sessions:
                pids.append(int(name))
        except OSError:  # gone meanwhile
            continue
    return pids


def _stop(sessions: list[int]) -> None:
    """SIGKILL every process in `sessions` (the cluster's, and nothing else)."""
    deadline = time.time() + 30
    while (pids := _in_sessions(sessions)) and time.time() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)
    assert not _in_sessions(sessions), "Ray processes of the test cluster are still running"


@pytest.fixture(scope="module")
def recipe() -> Iterator[Recipe]:
    """A head and a second node started with the recipe's commands, stopped at the end."""
    tmpdir = tempfile.mkdtemp(prefix="rr", dir="/tmp")  # short: Ray's socket paths <= 107 bytes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": tmpdir,
           "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    cluster = Recipe("127.0.0.1", _free_port(), env, [])
    try:
        cluster.sessions.append(_start(HEAD.format(ip=cluster.ip, port=cluster.port) + SMALL,
                                       env))
        cluster.sessions.append(_start(NODE.format(ip=cluster.ip, port=cluster.port) + SMALL,
                                       env))
        deadline = time.time() + 60
        while len(cluster.nodes()) < 2 and time.time() < deadline:
            time.sleep(1)
        yield cluster
    finally:
        _stop(cluster.sessions)
        shutil.rmtree(tmpdir, ignore_errors=True)


def _of_this_machine(ip: str) -> bool:
    """Whether `ip` is an address of this machine: only those can be bound to."""
    with socket.socket() as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return False
    return True


def test_recipe_cluster_has_two_nodes_advertising_addresses_of_this_machine(recipe):
    """Ray replaces --node-ip-address=127.0.0.1 by the machine's own address (its route out),
    which is still this machine: nothing the cluster advertises is another host's."""
    nodes = recipe.nodes()
    assert len(nodes) == 2 and sum(n["Resources"].get("CPU", 0) for n in nodes) == 2
    assert all(_of_this_machine(n["NodeManagerAddress"]) for n in nodes), nodes


def _sweep_config(demo_dir: Path, root: Path, **overrides) -> Path:
    cfg = tiny_config_dict(demo_dir, root, **{
        # reuse_actors off: each trial asks for a slot of its own, so concurrent trials spread.
        "train.epochs": 1, "data.n_folds": 3, "ray.reuse_actors": False, **overrides})
    return write_config(root / "sweep.yaml", cfg)


@pytest.mark.usefixtures("mlflow_db")
def test_recipe_sweep_trains_folds_on_both_nodes(demo_dir, tmp_path, recipe):
    """The recipe's sweep command, storage on a folder both nodes see (one machine): every fold
    is trained, and the fold manifests name both of the cluster's nodes."""
    path = _sweep_config(demo_dir, tmp_path)
    done = recipe.run(SWEEP.format(config=path, ip=recipe.ip, port=recipe.port) + " --quiet",
                      cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    manifests = [json.loads(p.read_text())
                 for p in (tmp_path / "sweeps" / "tiny" / "candidates").glob("*/fold*.json")]
    assert sorted(m["fold"] for m in manifests) == [0, 1, 2]
    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in recipe.nodes()}
    assert {m["node_id"] for m in manifests} == set(nodes)
    assert {m["node_ip"] for m in manifests} <= set(nodes.values())


def test_sweep_without_the_token_is_one_line_naming_it_before_anything_is_written(
        demo_dir, tmp_path, recipe):
    """A driver that joins without RAY_AUTH_MODE=token: exit 2 with one line that names
    RAY_AUTH_MODE and the token, without Ray's retries, and no folds file or cache written."""
    path = _sweep_config(demo_dir, tmp_path, **{"data.cache_dir": str(tmp_path / "cache")})
    cmd = SWEEP.format(config=path, ip=recipe.ip, port=recipe.port).removeprefix(
        "RAY_AUTH_MODE=token ")
    done = recipe.run(f"{cmd} --quiet", cwd=tmp_path, timeout=200)
    assert done.returncode == 2, done.stderr[-3000:]
    # One line: not Ray's 20 lines of retries ("gcs_client.cc: ... InvalidAuthToken") first.
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    last = done.stderr.strip()
    assert last.startswith("sketchtune.sweep: error: ") and "RAY_AUTH_MODE" in last, last
    assert "token" in last.removeprefix("sketchtune.sweep: error: ").lower(), last
    assert "ray start --head" not in last, last  # a head runs: starting one is no fix
    assert not (tmp_path / "folds.csv").exists() and not (tmp_path / "cache").exists()
    assert not (tmp_path / "sweeps").exists()
