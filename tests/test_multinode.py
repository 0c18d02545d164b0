"""The sweep on a real multi-node Ray cluster (Ray's own `ray.cluster_utils.Cluster`, a head and
two worker nodes on this machine): placement across nodes, a worker node lost mid-sweep, the
driver killed and resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sketchtune.config import SweepConfig, candidate_id, load_config
from sketchtune.store import PredictionStore
from tests.conftest import tiny_config_dict, write_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class MultiNode:
    """A running Ray cluster of this test module: `nodes` maps a name to its Ray node."""

    cluster: object  # ray.cluster_utils.Cluster
    nodes: dict[str, object]  # "head" | "a" | "b" -> ray._private.node.Node
    tmpdir: str  # RAY_TMPDIR of the cluster and of the sweeps that join it

    def name_of(self, node_id: str) -> str:
        return next((n for n, node in self.nodes.items() if node.node_id == node_id), node_id)


@pytest.fixture(scope="module")
def multinode() -> Iterator[MultiNode]:
    """A head and two worker nodes, each advertising 1 CPU (logical: Ray does not enforce it,
    and this machine has 2 cores) and a resource named after the node.

    The cluster keeps its files, sockets and its address file (what `ray.address: auto` reads)
    under a temporary RAY_TMPDIR of its own, and `shutdown` stops exactly its processes: other
    Ray instances on the machine are left alone. The path is short: Ray's socket paths must fit
    in 107 bytes.
    """
    from ray.cluster_utils import Cluster

    tmpdir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmpdir)
        mp.delenv("RAY_ADDRESS", raising=False)
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"node_head": 1}, "include_dashboard": False,
            # A lost node is declared dead after ~2 s instead of Ray's default ~15 s.
            "_system_config": {"health_check_period_ms": 1000,
                               "health_check_failure_threshold": 2}})
        try:
            nodes = {"head": cluster.head_node,
                     "a": cluster.add_node(num_cpus=1, resources={"node_a": 1}),
                     "b": cluster.add_node(num_cpus=1, resources={"node_b": 1})}
            cluster.wait_for_nodes()
            yield MultiNode(cluster, nodes, tmpdir)
        finally:
            cluster.shutdown()
            shutil.rmtree(tmpdir, ignore_errors=True)


def cluster_config(demo_dir: Path, root: Path, mn: MultiNode, **overrides) -> tuple[SweepConfig,
                                                                                       Path]:
    # reuse_actors off: a reused actor takes the next trial on the node it is on, so on a
    # loaded machine (actor start-up slower than a tiny trial) every trial ran on one node.
    # Without it each trial asks for its own slot and concurrent trials spread.
    ray = {"address": mn.cluster.address, "verbose": 0, "max_failures": 1, "reuse_actors": False,
           **overrides.pop("ray", {})}
    raw = tiny_config_dict(demo_dir, root, **{"ray": ray, **overrides})
    path = write_config(root / "sweep.yaml", raw)
    return load_config(path), path


def sweep_cmd(path: Path) -> list[str]:
    return [sys.executable, "-m", "sketchtune.sweep", str(path), "--quiet"]


def sweep_env(mn: MultiNode) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": mn.tmpdir}
    env.pop("RAY_ADDRESS", None)
    return env


def run_sweep_on(mn: MultiNode, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(path), env=sweep_env(mn), cwd=path.parent,
                          capture_output=True, text=True, timeout=400)


def manifests(cfg: SweepConfig) -> dict[tuple[str, int], dict]:
    out = {}
    for p in sorted((cfg.sweep_dir / "candidates").glob("*/fold*.json")):
        m = json.loads(p.read_text())
        out[(m["candidate_id"], m["fold"])] = m
    return out


def cv_runs(cfg: SweepConfig):
    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id], max_results=500)
    return client, runs, [r for r in runs if r.data.tags.get("stage") == "cv"]


def train_keys(cfg: SweepConfig) -> list[str]:
    return pd.read_csv(cfg.data.folds_csv)["image_path"].tolist()


def trial_results(cfg: SweepConfig) -> list[dict]:
    """Every result Tune has written so far (each trial's result.json), as the sweep runs."""
    out = []
    for p in (cfg.sweep_dir / "ray").glob("cv*/trial_*/result.json"):
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # the line being written
                pass
    return out


def kill_driver_and_snapshot(proc: subprocess.Popen, cfg: SweepConfig, at_least: int,
                             fewer_than: int) -> dict[tuple[str, int], dict]:
    """SIGKILL the sweep once `at_least` folds are in the store; the manifests at that moment."""
    deadline = time.time() + 300
    while time.time() < deadline and len(manifests(cfg)) < at_least:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # kill -9: the driver gets no chance to clean up
    proc.wait()
    before = manifests(cfg)
    assert at_least <= len(before) < fewer_than, len(before)
    return before


@pytest.mark.usefixtures("mlflow_db")
def test_multinode_driver_killed_and_resumed_on_the_cluster_retrains_nothing(demo_dir, tmp_path,
                                                                           multinode):
    """The sweep's driver is killed with SIGKILL while trials run on the cluster's nodes; the
    same command joins the same cluster and finishes: the folds done before the kill are not
    trained again, no fold or MLflow run is duplicated, and the trials ran on several nodes,
    each fold's manifest and MLflow run naming the node that trained it. Both runs find the
    cluster with `ray.address: auto`: the address its head recorded (as `ray start --head`
    does), under the cluster's RAY_TMPDIR."""
    # Two candidates x two folds on three slots: the kill after two folds comes while the
    # others still run or wait (three folds trained two more trials, each with its own actor).
    cfg, path = cluster_config(demo_dir, tmp_path, multinode, **{
        "data.n_folds": 2, "train.epochs": 3, "candidates": [{}, {"optim.lr": 1e-3}],
        "ray": {"address": "auto"}})
    proc = subprocess.Popen(sweep_cmd(path), env=sweep_env(multinode), cwd=path.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = kill_driver_and_snapshot(proc, cfg, 2, 4)
    killed_at_ms = time.time() * 1000

    done = run_sweep_on(multinode, path)
    assert done.returncode == 0, done.stderr[-3000:]
    after = manifests(cfg)
    assert len(after) == 4
    # Folds finished before the kill: the same manifest (training time, metrics, node); only
    # the MLflow run id may be added, when the kill came between the fold and its logging.
    for key, old in before.items():
        new = dict(after[key])
        new_run = new.pop("mlflow_run_id")
        assert old.pop("mlflow_run_id") in (None, new_run)
        assert old == new, key
    # One slot per node: the trials spread over the nodes, all of this machine (and of this
    # cluster: `auto` joined it, not another Ray on the machine).
    cluster_ids = {n.node_id for n in multinode.nodes.values()}
    nodes = {m["node_id"] for m in after.values()}
    assert nodes <= cluster_ids and len(nodes) >= 2, [multinode.name_of(n) for n in nodes]
    ip = multinode.nodes["head"].node_ip_address
    assert {m["node_ip"] for m in after.values()} == {ip}

    client, runs, cv = cv_runs(cfg)
    per_fold = Counter((r.data.tags["candidate_id"], int(r.data.tags["fold"])) for r in cv)
    assert per_fold == Counter(dict.fromkeys(after, 1)), "a trial's MLflow run was duplicated"
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len([r for r in runs if r.data.tags.get("sketchtune.role") == "sweep"]) == 1
    for r in cv:
        key = (r.data.tags["candidate_id"], int(r.data.tags["fold"]))
        assert r.data.tags["node_id"] == after[key]["node_id"] and r.data.tags["node_ip"] == ip
        assert after[key]["mlflow_run_id"] == r.info.run_id
        if key in before:
            # Trained once, before the kill: no epoch logged twice, none logged since. (Its
            # last epoch may be missing: the driver can die before logging it.)
            history = client.get_metric_history(r.info.run_id, "val_acc")
            steps = [m.step for m in history]
            assert len(steps) == len(set(steps)) and set(steps) <= set(
                range(1, before[key]["epochs_run"] + 1)), (key, steps)
            assert all(m.timestamp < killed_at_ms for m in history), key


@pytest.mark.usefixtures("mlflow_db")
def test_multinode_worker_node_lost_mid_sweep_trial_retried_from_checkpoint(demo_dir, tmp_path,
                                                                          multinode):
    """A worker node is removed (its processes killed) once a trial on it has reported an
    epoch: Tune retries that trial on a remaining node from its last checkpoint, the sweep
    exits 0, every (candidate, fold) is in the store once, and MLflow has the lost attempt
    FAILED and one FINISHED run per fold."""
    epochs = 6
    # max_failures 2, the project's default: a retry that Ray placed on the lost node before
    # it was declared dead is a second failure, not the end of the trial.
    cfg, path = cluster_config(demo_dir, tmp_path, multinode, **{
        "data.n_folds": 3, "train.epochs": epochs, "train.patience": epochs,
        "ray": {"max_failures": 2}})
    workers = {multinode.nodes[n].node_id: n for n in ("a", "b")}
    log = tmp_path / "sweep.log"  # a file, not a pipe: a full pipe would block the sweep
    proc = subprocess.Popen(sweep_cmd(path), env=sweep_env(multinode), cwd=path.parent,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    lost = None
    try:
        deadline = time.time() + 300
        while lost is None and time.time() < deadline:
            assert proc.poll() is None, "the sweep ended before a node could be lost"
            on_workers = [r for r in trial_results(cfg)
                          if r["node_id"] in workers and not r["skipped"]
                          and r["epoch"] <= epochs - 3]  # time left to lose the node
            if on_workers:
                lost = on_workers[0]
            else:
                time.sleep(0.2)
        assert lost is not None, "no trial reported an epoch on a worker node"
        name = workers[lost["node_id"]]
        # No graceful shutdown: the node's raylet and workers are killed, as when a machine
        # goes away.
        multinode.cluster.remove_node(multinode.nodes[name], allow_graceful=False)
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        # Later tests get a cluster of the same shape.
        if lost is not None and name in multinode.nodes and \
                multinode.nodes[name] not in multinode.cluster.worker_nodes:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("RAY_TMPDIR", multinode.tmpdir)
                multinode.nodes[name] = multinode.cluster.add_node(
                    num_cpus=1, resources={f"node_{name}": 1})
    assert proc.returncode == 0, log.read_text()[-3000:]
    # After Ray's own output about the dead node, the sweep says in one line what happened.
    said = [line for line in log.read_text().splitlines() if "Ray lost 1 node(s)" in line]
    assert len(said) == 1 and lost["node_id"][:8] in said[0], log.read_text()[-3000:]

    store = PredictionStore(cfg.sweep_dir)
    cid = candidate_id(cfg.train)
    assert store.folds(cid) == [0, 1, 2]
    assert store.completeness(cid, train_keys(cfg)) == (True, "complete")
    found = manifests(cfg)
    lost_fold = next(k for k, m in found.items() if m["ray_trial_id"] == lost["trial_id"])
    assert found[lost_fold]["node_id"] != lost["node_id"]  # finished on a remaining node
    assert found[lost_fold]["node_id"] in {n.node_id for n in multinode.nodes.values()}

    client, _, cv = cv_runs(cfg)
    status = Counter((r.data.tags["candidate_id"], int(r.data.tags["fold"]), r.info.status)
                     for r in cv)
    assert {k: v for k, v in status.items() if k[2] == "FINISHED"} == \
        {(c, f, "FINISHED"): 1 for c, f in found}
    failed = [r for r in cv if r.info.status == "FAILED"]
    # Every failed attempt ran on the lost node (one that never reported has no node tag).
    assert failed and {r.data.tags.get("node_id", lost["node_id"]) for r in failed} == \
        {lost["node_id"]}
    assert {(r.data.tags["candidate_id"], int(r.data.tags["fold"])) for r in failed} == \
        {lost_fold}
    assert len(cv) == len(found) + len(failed)
    # From its last checkpoint: the retry's first epoch follows the lost attempt's last one,
    # and together they ran every epoch once.
    retry = next(r for r in cv if r.info.status == "FINISHED"
                 and r.data.tags["ray_trial_id"] == lost["trial_id"])
    steps = {r.info.run_id: sorted(m.step for m in client.get_metric_history(r.info.run_id,
                                                                             "val_acc"))
             for r in (*failed, retry)}
    lost_steps = sorted(s for r in failed for s in steps[r.info.run_id])
    assert lost_steps and steps[retry.info.run_id][0] == lost_steps[-1] + 1, steps
    assert sorted(lost_steps + steps[retry.info.run_id]) == list(range(1, epochs + 1)), steps
    assert retry.data.tags["node_id"] == found[lost_fold]["node_id"]
