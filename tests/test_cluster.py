"""The Ray a sweep starts: its workers start with the driver's PYTHONPATH and malloc choices."""

from __future__ import annotations

import pytest

from sketchtune.cluster import start_ray, worker_env
from sketchtune.fs import CLOUD_ENV


def test_worker_env_forwards_malloc_settings_only_when_set(monkeypatch):
    monkeypatch.delenv("SKETCHTUNE_MALLOC", raising=False)
    monkeypatch.delenv("MALLOC_TOP_PAD_", raising=False)
    for key in CLOUD_ENV:  # a CI runner may have AWS_* set: forwarded too (next test)
        monkeypatch.delenv(key, raising=False)
    assert set(worker_env()) == {"PYTHONPATH"}
    monkeypatch.setenv("MALLOC_TOP_PAD_", "12345")
    monkeypatch.setenv("SKETCHTUNE_MALLOC", "default")
    assert worker_env()["MALLOC_TOP_PAD_"] == "12345"
    assert worker_env()["SKETCHTUNE_MALLOC"] == "default"


def test_worker_env_forwards_cloud_credentials_and_endpoint_when_set(monkeypatch):
    for key in CLOUD_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    env = worker_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t" and "AWS_SESSION_TOKEN" not in env


@pytest.mark.slow
def test_ray_worker_starts_with_the_env_and_the_trainer_tunes_its_malloc(tiny_cfg, monkeypatch):
    import ray

    import sketchtune.cluster as cluster

    cfg, _ = tiny_cfg()
    monkeypatch.setenv("MALLOC_TOP_PAD_", "4096")
    # A local Ray's workers inherit the driver's environment anyway; a variable the driver
    # lacks shows that runtime_env itself reaches the worker's exec (as on a cluster, where
    # workers are children of `ray start`).
    real = cluster.worker_env
    monkeypatch.setattr(cluster, "worker_env", lambda: {**real(), "SKETCHTUNE_ENV_PROBE": "1"})
    start_ray(cfg, quiet=True)
    try:
        @ray.remote(num_cpus=0)
        def look(tune: bool) -> tuple[dict[str, str], bool]:
            # /proc/self/environ is the environment the process was exec'd with: what glibc
            # read at start-up, not a later os.environ change.
            raw = open("/proc/self/environ", "rb").read().split(b"\0")
            env = dict(x.decode().split("=", 1) for x in raw if b"=" in x)
            from sketchtune.allocator import tune_malloc

            return env, tune_malloc() if tune else False

        env, tuned = ray.get(look.remote(True))
    finally:
        ray.shutdown()
    assert env["SKETCHTUNE_ENV_PROBE"] == "1" and env["MALLOC_TOP_PAD_"] == "4096"
    assert env["PYTHONPATH"].split(":")[0] == worker_env()["PYTHONPATH"].split(":")[0]
    assert tuned is False  # the user's own MALLOC_*_ reached the worker and were respected


def test_start_ray_joins_the_address_auto_was_resolved_to(tiny_cfg, monkeypatch):
    """`auto` reaches ray.init as the recorded address pre-flight checked, never as `auto`:
    Ray would join whichever Ray instance on the machine started last."""
    import ray

    cfg, _ = tiny_cfg(**{"ray": {"address": "auto", "verbose": 0}})
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    seen = {}
    monkeypatch.setattr(ray, "init", lambda address=None, **kw: seen.update(address=address))
    start_ray(cfg, quiet=True)
    assert seen == {"address": "10.1.2.3:6379"}
