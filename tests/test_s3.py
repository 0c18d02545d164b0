"""Cloud storage against a real S3 endpoint: moto's standalone server on a free localhost port."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sketchtune import fs
from sketchtune.errors import StoreError
from sketchtune.fs import URI, location
from sketchtune.store import PredictionStore
from tests.conftest import tiny_config_dict, write_config

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server for this module: `http://127.0.0.1:<port>`."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch) -> str:
    """A new bucket on the moto server, with the standard AWS variables pointing at it."""
    import boto3

    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    fs._filesystem.cache_clear()  # a filesystem made under another test's environment
    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def _keys(s3_endpoint: str, bucket: str, prefix: str = "") -> dict[str, int]:
    import boto3

    pages = boto3.client("s3", endpoint_url=s3_endpoint).get_paginator("list_objects_v2")
    return {o["Key"]: o["Size"] for page in pages.paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])}


def _fold(store: PredictionStore, cid: str = "c1", fold: int = 0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(3), size=4).astype(np.float32)
    t = rng.dirichlet(np.ones(3), size=2).astype(np.float32)
    arrays = dict(val_keys=[f"v{fold}_{i}" for i in range(4)], val_targets=np.arange(4) % 3,
                  val_probs=p, test_keys=["t0", "t1"], test_probs=t)
    store.write_fold(cid, fold, **arrays, manifest={"n_folds": 2},
                     files={f"fold{fold}.safetensors": b"weights"})
    return arrays


@pytest.mark.parametrize(("text", "want"), [
    ("file:///tmp/x", Path("/tmp/x")), ("file://localhost/tmp/x", Path("/tmp/x")),
    ("file:/tmp/x", Path("/tmp/x")), ("./s3:/b", Path("s3:/b")), ("my:dir", Path("my:dir")),
    ("gs://bkt/a?x=1", URI("gs://bkt/a?x=1")), ("abfss://c/p", URI("abfss://c/p")),
])
def test_location_reads_uris_and_local_paths(text, want):
    assert location(text) == want


@pytest.mark.parametrize(("text", "why"), [
    ("s3://", "is not a storage URI"),  # no bucket
    ("s3:/bucket/x", "without its '//'"),  # would be a local folder named "s3:"
    ("gs:/x", "without its '//'"),
    ("s3:bucket", "without its '//'"),
    ("http:/host/x", "without its '//'"),
    ("file://relative/x", "a file: URI names an absolute local path"),  # netloc dropped: /x
    ("file:relative", "a file: URI names an absolute local path"),
    ("ftp://host/x", "pyarrow.fs cannot open 'ftp' storage"),  # fails only at the first read
])
def test_location_refuses_what_is_neither_a_uri_nor_meant_as_a_folder(text, why):
    with pytest.raises(ValueError, match=None) as err:
        location(text)
    assert why in str(err.value) and repr(text) in str(err.value)


@pytest.mark.slow
def test_storage_bad_uri_option_or_dead_endpoint_is_a_store_error_naming_the_uri():
    bad = location("s3://bkt/x?no_such_option=1")
    with pytest.raises(StoreError, match=r"s3://bkt/x\?no_such_option=1: pyarrow.fs cannot "
                                         r"open it \(Unexpected query parameter"):
        fs.is_dir(bad)
    # Nothing listens on port 9 here: refused at once, but the AWS SDK retries for ~6 s, so
    # one read stands for all (is_dir, is_file, list_dir and open_input share `_reading`).
    dead = location("s3://bkt/x?endpoint_override=127.0.0.1:9&scheme=http")
    with pytest.raises(StoreError, match=r"^s3://bkt/x\?endpoint_override=.*: cannot read "
                                         r"\(.*NETWORK_CONNECTION"):
        fs.read_bytes(dead)


def test_storage_region_not_resolved_is_a_store_error_naming_the_uri(monkeypatch):
    """Without an endpoint, pyarrow resolves an S3 bucket's region when it opens the filesystem;
    offline that is an OSError naming only the bucket, which optimize showed as is."""
    def offline(scheme, netloc, query):
        raise OSError(f"When resolving region for bucket '{netloc}': AWS Error "
                      "NETWORK_CONNECTION during HeadBucket operation")

    monkeypatch.setattr(fs, "_filesystem", offline)
    with pytest.raises(StoreError, match=r"^s3://bkt/sweeps/demo: pyarrow.fs cannot open it "
                                         r"\(When resolving region"):
        fs.is_dir(location("s3://bkt/sweeps/demo"))
    with pytest.raises(StoreError, match=r"^storage_path: s3://bkt/sweeps: pyarrow.fs cannot"):
        fs.check_writable(location("s3://bkt/sweeps"), "storage_path")


def test_storage_uri_joins_and_names_like_a_path_keeping_its_options():
    u = URI("s3://bkt/sweeps/?endpoint_override=host:9000&scheme=http")
    child = u / "demo" / "candidates"
    assert str(child) == "s3://bkt/sweeps/demo/candidates?endpoint_override=host:9000&scheme=http"
    assert child.name == "candidates" and child.parent == u / "demo"
    assert str(URI("s3://bkt").parent) == "s3://bkt" and (URI("s3://bkt") / "a").key == "a"
    assert location("s3://bkt/x") == URI("s3://bkt/x")
    assert location("sweeps") == Path("sweeps") and location("file:///tmp/x") == Path("/tmp/x")
    with pytest.raises(ValueError):
        URI("s3:///no-bucket")
    with pytest.raises(ValueError):
        u / "../other"


def test_storage_pyarrow_honours_aws_endpoint_url(bucket, s3_endpoint):
    """pyarrow 25 reads AWS_ENDPOINT_URL (the standard variable): no option in the URI."""
    fs.write_bytes(URI(f"s3://{bucket}/a/b.bin"), b"hello")
    assert _keys(s3_endpoint, bucket) == {"a/b.bin": 5}


def test_storage_endpoint_override_in_the_uri(bucket, s3_endpoint, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    host = s3_endpoint.removeprefix("http://")
    u = URI(f"s3://{bucket}/x?endpoint_override={host}&scheme=http")
    fs.write_bytes(u / "f.txt", b"abc")
    assert fs.read_bytes(u / "f.txt") == b"abc"


def test_storage_read_write_list_delete_on_s3(bucket):
    root = URI(f"s3://{bucket}/sweeps")
    assert fs.list_dir(root) == {} and not fs.is_dir(root)
    fs.write_bytes(root / "a.bin", b"12345")
    fs.write_bytes(root / "sub" / "b.bin", b"xy")
    assert fs.list_dir(root) == {"a.bin": 5, "sub": None}
    assert fs.is_file(root / "a.bin") and fs.is_dir(root / "sub")
    assert not fs.is_file(root / "sub") and not fs.is_file(root / "missing")
    assert fs.read_bytes(root / "a.bin") == b"12345"
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(root / "missing")
    fs.write_bytes(root / "a.bin", b"new")  # an overwrite is whole
    assert fs.read_bytes(root / "a.bin") == b"new"
    fs.delete(root / "a.bin")
    fs.delete(root / "a.bin")  # gone already: nothing
    assert fs.list_dir(root) == {"sub": None}


def test_store_on_s3_round_trip_with_marker_last(bucket, s3_endpoint, monkeypatch):
    store = PredictionStore(f"s3://{bucket}/sweeps/demo")
    order: list[str] = []
    real = fs.write_bytes
    monkeypatch.setattr(fs, "write_bytes", lambda loc, data: (order.append(loc.name),
                                                                   real(loc, data)))
    arrays = _fold(store)
    assert order == ["fold0.safetensors", "fold0.npz", "fold0.json"]  # the marker last
    assert store.candidates() == ["c1"] and store.folds("c1") == [0]
    got = store.read_fold("c1", 0)
    np.testing.assert_array_equal(got.val_probs, arrays["val_probs"])
    assert got.test_keys.tolist() == ["t0", "t1"]
    sizes = _keys(s3_endpoint, bucket, "sweeps/demo/candidates/c1/")
    files = got.manifest["files"]
    assert files["fold0.npz"]["bytes"] == sizes["sweeps/demo/candidates/c1/fold0.npz"]
    assert files["fold0.safetensors"]["bytes"] == len(b"weights")
    assert store.update_manifest("c1", 0, mlflow_run_id="r1")["mlflow_run_id"] == "r1"
    assert store.read_manifest("c1", 0)["mlflow_run_id"] == "r1"


def test_store_on_s3_ignores_folds_without_their_marker(bucket):
    """Arrays whose manifest never came (the writer died): no reader sees the fold."""
    store = PredictionStore(f"s3://{bucket}/sweeps/demo")
    _fold(store, fold=0)
    fs.write_bytes(store.candidate_dir("c1") / "fold1.npz", b"arrays, no manifest")
    fs.write_bytes(store.candidate_dir("c2") / "fold0.npz", b"arrays, no manifest")
    assert store.candidates() == ["c1"] and store.folds("c1") == [0]
    assert not store.has_fold("c1", 1)
    ok, why = store.completeness("c1", [f"v{k}_{i}" for k in (0, 1) for i in range(4)])
    assert not ok and "missing fold(s) [1]" in why


def test_store_on_s3_rewrite_that_dies_half_way_leaves_no_fold(bucket, monkeypatch):
    """A retried trial rewriting its fold deletes the manifest first: dying after the new
    arrays leaves a fold no reader trusts, never the old manifest over new arrays."""
    store = PredictionStore(f"s3://{bucket}/sweeps/demo")
    _fold(store, seed=0)
    real = fs.write_bytes

    def dies_at_the_manifest(loc, data):
        if loc.name.endswith(".json"):
            raise StoreError(f"{loc}: cannot write (simulated)")
        real(loc, data)

    monkeypatch.setattr(fs, "write_bytes", dies_at_the_manifest)
    with pytest.raises(StoreError):
        _fold(store, seed=1)
    assert store.folds("c1") == [] and store.candidates() == []


def test_store_on_s3_refuses_arrays_that_do_not_match_their_manifest(bucket):
    store = PredictionStore(f"s3://{bucket}/sweeps/demo")
    _fold(store, seed=0)
    npz = store.candidate_dir("c1") / "fold0.npz"
    good = fs.read_bytes(npz)
    for bad in (good[:200], good[:-1] + bytes([good[-1] ^ 1])):  # cut short; one bit flipped
        fs.write_bytes(npz, bad)
        with pytest.raises(StoreError, match="not what its manifest records") as e:
            store.read_fold("c1", 0)
        assert str(npz) in str(e.value) and "\n" not in str(e.value)


def test_ensemble_object_set_writes_its_marker_last(bucket, monkeypatch):
    from ensemble_search.cli import write_files

    order: list[str] = []
    real = fs.write_bytes
    monkeypatch.setattr(fs, "write_bytes", lambda loc, data: (order.append(loc.name),
                                                                   real(loc, data)))
    target = URI(f"s3://{bucket}/sweeps/demo/ensemble")
    paths = write_files(target, {"ensemble.json": b"{}", "a.png": b"p", "b.csv": b"c"})
    assert order == ["a.png", "b.csv", "ensemble.json"]
    assert paths == [target / "ensemble.json", target / "a.png", target / "b.csv"]
    order.clear()
    write_files(target, {"submission.csv": b"s", "test_probs.npy": b"n"})
    assert order == ["test_probs.npy", "submission.csv"]
    assert set(fs.list_dir(target)) == {"ensemble.json", "a.png", "b.csv",
                                             "submission.csv", "test_probs.npy"}


def test_predict_reads_safetensors_weights_from_the_bucket(bucket):
    """predict --images: the header check and the load work on an object's bytes."""
    import torch
    from safetensors.torch import save

    from sketchtune.predict import _check_weights_file, _load_weights

    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    uri = URI(f"s3://{bucket}/c1/fold0.safetensors")
    fs.write_bytes(uri, save(sd))
    _check_weights_file(uri, {"w": (2, 3), "b": (3,)})
    assert torch.equal(_load_weights(uri)["w"], sd["w"])
    with pytest.raises(StoreError, match="do not fit"):
        _check_weights_file(uri, {"w": (3, 2), "b": (3,)})
    fs.write_bytes(uri, save(sd)[:20])  # cut short
    with pytest.raises(StoreError, match="unreadable weights file") as e:
        _check_weights_file(uri, {"w": (2, 3), "b": (3,)})
    assert str(uri) in str(e.value)


def test_folds_file_on_s3(bucket):
    from sketchtune.folds import load_or_make_folds

    df = pd.DataFrame({"image_path": [f"i{j}.png" for j in range(20)], "target": [0, 1] * 10})
    uri = URI(f"s3://{bucket}/data/folds.csv")
    made = load_or_make_folds(df, uri, 2, 0)
    assert fs.is_file(uri)
    again = load_or_make_folds(df, uri, 2, 0)
    pd.testing.assert_frame_equal(made, again)
    assert pd.read_csv(io.BytesIO(fs.read_bytes(uri)))["fold"].tolist() == \
        made["fold"].tolist()


@pytest.mark.slow
def test_storage_preflight_missing_bucket_and_unreachable_endpoint(bucket, monkeypatch):
    with pytest.raises(StoreError, match="does not exist") as e:
        fs.check_writable(URI("s3://no-such-bucket-here/sweeps"), "storage_path")
    assert "s3://no-such-bucket-here/sweeps" in str(e.value) and "\n" not in str(e.value)
    fs.check_writable(URI(f"s3://{bucket}/sweeps"), "storage_path")
    assert fs.list_dir(URI(f"s3://{bucket}/sweeps")) == {}  # the probe left nothing
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nobody there
    fs._filesystem.cache_clear()
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        fs.check_writable(URI(f"s3://{bucket}/sweeps"), "storage_path")
    assert f"s3://{bucket}/sweeps" in str(e.value) and "\n" not in str(e.value)
    assert time.monotonic() - t0 < 60


def test_sweep_missing_bucket_is_one_line_before_anything_is_written(demo_dir, tmp_path, bucket,
                                                                      capsys):
    from sketchtune.sweep import main

    cfg = tiny_config_dict(demo_dir, tmp_path, storage_path="s3://no-such-bucket-here/sweeps")
    path = write_config(tmp_path / "sweep.yaml", cfg)
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "s3://no-such-bucket-here/sweeps" in err and "\n" not in err
    assert not (tmp_path / "folds.csv").exists() and not (tmp_path / "mlflow.db").exists()


def _manifests(store: PredictionStore) -> dict[str, str]:
    return {f"{cid}/fold{k}": fs.read_bytes(store.candidate_dir(cid) / f"fold{k}.json")
            .decode() for cid in store.candidates() for k in store.folds(cid)}


@pytest.mark.usefixtures("mlflow_db")
@pytest.mark.slow
def test_sweep_on_s3_resumes_after_driver_sigkill_then_optimize_and_predict(
        demo_dir, tmp_path, bucket, s3_endpoint):
    """storage_path and the folds file in a bucket: kill -9 the driver mid-sweep, resume, then
    optimize and predict read the bucket and write the ensemble and the submission there."""
    sweeps = f"s3://{bucket}/sweeps"
    cfg = tiny_config_dict(demo_dir, tmp_path, storage_path=sweeps, **{
        "train.epochs": 1, "data.n_folds": 2, "data.folds_csv": f"s3://{bucket}/folds.csv",
        "candidates": [{}, {"optim.lr": 1e-3}]})
    path = write_config(tmp_path / "sweep.yaml", cfg)
    store = PredictionStore(f"{sweeps}/tiny")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the AWS_* variables of `bucket` included
    cmd = [sys.executable, "-m", "sketchtune.sweep", str(path), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not _manifests(store):
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _manifests(store)
    assert 1 <= len(before) < 4

    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _manifests(store)
    assert sorted(after) == [f"{c}/fold{k}" for c in store.candidates() for k in (0, 1)]
    assert len(store.candidates()) == 2
    for name, text in before.items():  # finished folds were not trained again
        old, new = json.loads(text), json.loads(after[name])
        assert old.pop("mlflow_run_id") in (None, new.pop("mlflow_run_id")) and old == new
    keys = _keys(s3_endpoint, bucket)
    assert "folds.csv" in keys and not any(k.endswith(".tmp") for k in keys)
    assert any(k.startswith("sweeps/tiny/ray/cv-") for k in keys)  # Ray's experiment too
    # Finished trials' checkpoints in the bucket are released to stubs, as on a local disk.
    states = [size for k, size in keys.items()
              if k.startswith("sweeps/tiny/ray/") and k.endswith("/state.pt")]
    assert states and max(states) < 2000, states
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    cv = Counter((r.data.tags["candidate_id"], r.data.tags["fold"]) for r in runs
                 if r.data.tags.get("stage") == "cv")
    assert len(cv) == 4 and set(cv.values()) == {1}, "an MLflow run was duplicated"
    for cid in store.candidates():  # every (candidate, fold) in the store exactly once
        assert sorted(k.rsplit("/", 1)[1] for k in keys
                      if k.startswith(f"sweeps/tiny/candidates/{cid}/")) == [
            "fold0.json", "fold0.npz", "fold0.safetensors",
            "fold1.json", "fold1.npz", "fold1.safetensors"]

    # In this process, as tests/test_ensemble_cli.py runs them (the AWS_* variables are set
    # here too): two more interpreters importing torch and MLflow proved nothing more.
    from ensemble_search import optimize, predict

    for module in (optimize, predict):
        assert module.main([str(path), "--quiet"]) == 0, module.__name__
    ens = URI(f"{sweeps}/tiny/ensemble")
    assert {"ensemble.json", "submission.csv", "test_probs.npy"} <= set(fs.list_dir(ens))
    sub = pd.read_csv(io.BytesIO(fs.read_bytes(ens / "submission.csv")))
    test = pd.read_csv(demo_dir / "test.csv")
    assert list(sub.columns) == ["ID", "image_path", "target"]
    assert sub["ID"].tolist() == list(range(len(test)))
    assert sub["image_path"].tolist() == test["image_path"].tolist()
    assert sub["target"].between(0, 4).all()
    spec = json.loads(fs.read_bytes(ens / "ensemble.json"))
    assert {c["candidate_id"] for c in spec["candidates"]} <= set(store.candidates())


@pytest.fixture(scope="module")
def s3_auth_endpoint():
    """A moto S3 server that checks every request's signature (IAM auth on), in a process of
    its own: moto reads that setting once, at import."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "moto did not start"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_storage_without_any_credentials_says_none_were_found_and_where_they_are_read_from(
        s3_auth_endpoint, tmp_path, monkeypatch):
    """No AWS_ACCESS_KEY_ID, no profile, no instance role: pyarrow says only 'AWS Error UNKNOWN
    (HTTP status 500)'; the line says that no credentials were found, and where they are read."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_auth_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    fs._filesystem.cache_clear()
    with pytest.raises(StoreError) as e:
        fs.check_writable(URI("s3://some-bucket/sweeps"), "storage_path")
    line = str(e.value)
    assert "\n" not in line and line.startswith("storage_path: s3://some-bucket/sweeps: ")
    assert "no credentials" in line, line
    for where in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", str(tmp_path / ".aws"), s3_auth_endpoint):
        assert where in line, (where, line)
