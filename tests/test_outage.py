"""A storage outage during stage cv, longer than the retries: the sweep fails with one line, and
once the store is back the same command finishes it.

The store is a moto S3 server behind a TCP forwarder in this process: taking the forwarder down
refuses every connection (as a dead endpoint does) while moto keeps the bucket's data, and
bringing it up again on the same port restores the store as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_dict, write_config

ROOT = Path(__file__).resolve().parent.parent


class Forwarder:
    """127.0.0.1:`port` relayed to `target`, one thread per direction of each connection.

    `down()` closes the listening socket and cuts every open connection; `up()` listens again
    on the same port. `trip` (a regex on the bytes a client sends) takes it down the moment a
    request matches, before that request reaches the target; `tripped` is then set.
    """

    def __init__(self, target: tuple[str, int], trip: bytes | None = None) -> None:
        self.target, self.trip = target, re.compile(trip) if trip else None
        self.tripped = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self.up()

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for c in self._conns:
                _close(c)
            self._conns.clear()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _close(client), _close(server)
                    continue
                self._conns |= {client, server}
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        tail = b""  # a request line split across two reads still matches
        try:
            while data := src.recv(65536):
                if from_client and self.trip is not None and not self.tripped.is_set():
                    if self.trip.search(tail + data):
                        self.tripped.set()
                        self.down()
                        return
                    tail = data[-512:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src), _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The upload of a trial's state into a checkpoint folder of stage cv: the store goes away in
# the middle of writing a checkpoint. pyarrow 25 writes it as a multipart upload (a POST that
# starts it, then a PUT per part); cut at the PUT, Ray's upload (`pyarrow.fs.copy_files`)
# returns as if it had succeeded and leaves an empty checkpoint folder.
STATE_UPLOAD = rb"PUT /[^ ]*/ray/cv-[^ /]+/[^ /]+/checkpoint_\d+/state\.pt"


@pytest.fixture
def store_behind_forwarder(monkeypatch):
    """(bucket, forwarder, moto endpoint): the AWS variables point at the forwarder."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    fwd = Forwarder(("127.0.0.1", port), trip=STATE_UPLOAD)
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{fwd.port}",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    name = f"b-{uuid.uuid4().hex[:12]}"
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    try:
        yield name, fwd, endpoint
    finally:
        fwd.down()
        server.stop()


def _objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _failed_for_good(tracking_uri: str, name: str) -> bool:
    """Whether a trial has failed every retry (the MLflow callback tags its last run so)."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    return exp is not None and bool(client.search_runs(
        [exp.experiment_id], "tags.error LIKE 'failed after every retry%'"))


@pytest.mark.slow
@pytest.mark.usefixtures("mlflow_db")
def test_sweep_after_a_store_outage_longer_than_its_retries_is_finished_by_the_same_command(
        demo_dir, tmp_path, store_behind_forwarder):
    """The store goes down as the first cv checkpoint's state is uploaded and stays down until
    a trial has failed every retry; it comes back while the sweep still runs. The sweep exits
    non-zero with one line; the same command then finishes it: every fold in the store
    matching its manifest's sha256, exactly one FINISHED MLflow run per fold."""
    bucket, fwd, endpoint = store_behind_forwarder
    cfg = tiny_config_dict(demo_dir, tmp_path, storage_path=f"s3://{bucket}/sweeps", **{
        # One trial at a time (2 CPUs here): the trial the outage hits fails its retries
        # while the other fold waits, and that one runs once the store is back.
        "train.epochs": 1, "data.n_folds": 2, "resources.cpu": 2, "ray.max_failures": 1})
    path = write_config(tmp_path / "sweep.yaml", cfg)
    tracking = cfg["tracking_uri"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the AWS_* variables of the fixture
    cmd = [sys.executable, "-m", "sketchtune.sweep", str(path), "--quiet"]

    log = tmp_path / "first.err"
    with open(log, "w") as errf:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=errf)
        deadline = time.time() + 400
        while proc.poll() is None and time.time() < deadline:
            if fwd.tripped.is_set() and not fwd.is_up and _failed_for_good(tracking, "tiny"):
                fwd.up()  # the store is back, with its data, while the sweep still runs
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        first = proc.wait()
    err = log.read_text()
    assert fwd.tripped.is_set(), "the outage never began: no cv checkpoint was uploaded"
    assert fwd.is_up, f"no trial failed for good during the outage (rc {first}): {err[-2000:]}"
    assert first != 0, err[-2000:]
    last = err.strip().splitlines()[-1]
    # One line at the end, naming the store that failed and what to do.
    assert last.startswith("sketchtune.sweep: error: ") and bucket in last, last
    assert "run the same command" in last, last

    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]

    objects = _objects(endpoint, bucket, "sweeps/tiny/candidates/")
    manifests = {k: json.loads(v) for k, v in objects.items() if k.endswith(".json")}
    assert sorted(m["fold"] for m in manifests.values()) == [0, 1]
    assert len({m["candidate_id"] for m in manifests.values()}) == 1
    for key, m in manifests.items():
        folder = key.rsplit("/", 1)[0]
        for name, record in m["files"].items():
            data = objects[f"{folder}/{name}"]
            assert record == {**record, "bytes": len(data),
                              "sha256": hashlib.sha256(data).hexdigest()}, f"{folder}/{name}"
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    finished = Counter((r.data.tags["candidate_id"], r.data.tags["fold"]) for r in runs
                       if r.data.tags.get("stage") == "cv" and r.info.status == "FINISHED")
    assert sorted(k[1] for k in finished) == ["0", "1"] and set(finished.values()) == {1}, finished
