"""Pre-flight: each check fails with one line, exit 2, before anything is written."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sketchtune.config import load_config
from sketchtune.preflight import check_sweep
from sketchtune.sweep import main as sweep_main
from sketchtune.train import main as train_main
from tests.conftest import tiny_config_dict, write_config


def setup(demo_dir: Path, root: Path, **overrides) -> tuple[Path, dict[str, Path]]:
    """A tiny config whose every output lies under `root`; (its path, those outputs)."""
    overrides = {"data.cache_dir": str(root / "cache"), **overrides}
    path = write_config(root / "sweep.yaml", tiny_config_dict(demo_dir, root, **overrides))
    outputs = {"storage": root / "sweeps", "cache": root / "cache",
               "folds": root / "folds.csv", "mlflow.db": root / "mlflow.db"}
    return path, outputs


def refused(main, argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def assert_nothing_written(outputs: dict[str, Path], *keep: str) -> None:
    made = [k for k, p in outputs.items() if p.exists() and k not in keep]
    assert not made, f"written before the check failed: {made}"


CASES = {
    # id: (cli, config overrides, extra argv, words in the line)
    "sweep-gpu-without-gpu": ("sweep", {"resources": {"cpu": 1, "gpu": 1}}, [],
                              ("resources.gpu=1", "no CUDA GPU")),
    "train-device-mps": ("train", {}, ["--device", "mps"], ("--device 'mps'", "MPS")),
    "train-device-tpu": ("train", {}, ["--device", "tpu"], ("--device 'tpu'", "cpu, cuda")),
    "train-device-cuda": ("train", {}, ["--device", "cuda"], ("--device 'cuda'", "no CUDA")),
    "sweep-dead-ray-address": ("sweep", {"ray": {"address": "127.0.0.1:9", "verbose": 0}}, [],
                               ("ray.address", "nothing answers")),
    # Root passes os.access everywhere; nothing can be made under /proc even so.
    "sweep-storage-cannot-be-made": ("sweep", {"storage_path": "/proc/sketchtune-sweeps"}, [],
                                     ("storage_path", "cannot be written", "/proc")),
    "sweep-cache-cannot-be-made": ("sweep", {"data.cache_dir": "/proc/sketchtune-cache"}, [],
                                   ("data.cache_dir", "cannot be written")),
    # A local Ray has this machine's CPUs: asking for more is found before the data step.
    "sweep-more-cpus-than-the-machine": ("sweep", {"resources": {"cpu": 4096, "gpu": 0}}, [],
                                         ("resources.cpu=4096", "CPU(s)")),
    # test_convnext halves the image 5 times: 16 px leaves less than its last 2x2 kernel.
    "sweep-img-size-too-small": ("sweep", {"train.img_size": 16}, [],
                                 ("img_size=16", "too small", "test_convnext")),
    "train-img-size-too-small": ("train", {"train.img_size": 16}, [],
                                 ("img_size=16", "too small", "test_convnext")),
    "sweep-search-img-size-too-small": (
        "sweep", {"search": {"enabled": True, "space": {
            "img_size": {"type": "choice", "values": [32, 16]}}}}, [],
        ("img_size=16", "too small")),
    # test_vit's patches are 16 px: it cannot take the scale view's 40 px images.
    "train-scale-view-the-backbone-cannot-take": (
        "train", {"train.model.name": "test_vit", "train.views": ["scale"]}, [],
        ("train.views", "'scale' predicts at 40 px", "test_vit")),
    "sweep-scale-view-the-backbone-cannot-take": (
        "sweep", {"train.model.name": "test_vit", "train.views": ["hflip", "scale"]}, [],
        ("train.views", "'scale'", "test_vit")),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_preflight_refuses_before_writing(case, demo_dir, tmp_path, capsys):
    cli, overrides, extra, words = CASES[case]
    if "cuda" in case or "gpu" in case:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    path, outputs = setup(demo_dir, tmp_path, **overrides)
    line = refused(sweep_main if cli == "sweep" else train_main,
                   [str(path), *extra, "--quiet"], capsys)
    for w in words:
        assert w in line, line
    assert_nothing_written(outputs)


@pytest.mark.parametrize("key", ["storage", "cache"])
@pytest.mark.parametrize("cli", ["sweep", "train"])
def test_preflight_file_in_the_way_of_a_folder(cli, key, demo_dir, tmp_path, capsys):
    path, outputs = setup(demo_dir, tmp_path)
    outputs[key].write_text("not a folder")
    line = refused(sweep_main if cli == "sweep" else train_main, [str(path), "--quiet"], capsys)
    assert str(outputs[key]) in line and "is a file" in line, line
    assert_nothing_written(outputs, key)


def test_preflight_pretrained_without_weights_or_network(demo_dir, tmp_path, capsys,
                                                         monkeypatch):
    """No local weights and no hub: one line naming the key and the fix, at once, for both
    CLIs (the hub is made unreachable here, so the test does not depend on the network)."""
    monkeypatch.setattr("sketchtune.checks._hub_answers", lambda endpoint: "no route")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    path, outputs = setup(demo_dir, tmp_path, **{"train.model.pretrained": True})
    for main in (sweep_main, train_main):
        line = refused(main, [str(path), "--quiet"], capsys)
        assert "train.model.pretrained=true" in line and "test_convnext" in line, line
        assert "train.model.weights_file" in line and str(path) in line, line
    assert_nothing_written(outputs)


def test_check_sweep_no_warmup_warning_when_warmup_is_clamped(tiny_cfg, caplog):
    """One epoch leaves no warm-up (the scheduler clamps it to epochs - 1): no warning."""
    space = {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}
    cfg, path = tiny_cfg(**{"train.epochs": 1, "train.sched": {"warmup_epochs": 1},
                            "search": {"enabled": True, "space": space}})
    with caplog.at_level(logging.WARNING):
        check_sweep(cfg, str(path))
    assert "warm-up" not in caplog.text
    cfg, path = tiny_cfg(**{"train.epochs": 3, "train.sched": {"warmup_epochs": 1},
                            "search": {"enabled": True, "space": space}})
    with caplog.at_level(logging.WARNING):
        check_sweep(cfg, str(path))
    assert "within the 1 warm-up" in caplog.text


def test_unexpected_error_is_one_line_naming_its_type(tiny_cfg, capsys, monkeypatch):
    """The last-resort handler: exit 1, one line with the type; the traceback with --debug."""
    cfg, path = tiny_cfg()

    def boom(*args, **kwargs):
        raise RuntimeError("something nobody expected")

    for main, target in ((sweep_main, "sketchtune.sweep.run_sweep"),
                         (train_main, "sketchtune.train.run_trial")):
        monkeypatch.setattr(target, boom)
        capsys.readouterr()
        assert main([str(path), "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "unexpected RuntimeError" in err, err
        assert main([str(path), "--quiet", "--debug"]) == 1
        assert "Traceback" in capsys.readouterr().err
        # Loading the config is not what fails here: it is still valid.
        assert load_config(path).name == cfg.name


def test_preflight_ray_auto_without_a_started_cluster(demo_dir, tmp_path, capsys, monkeypatch):
    """`auto` with no `ray start` cluster recorded and no RAY_ADDRESS: refused before the
    folds and caches are written. Ray itself would join any Ray process it finds on the
    machine (another user's local Ray, which dies with that user's script)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("ray._private.utils.read_ray_address", lambda temp_dir=None: None)
    path, outputs = setup(demo_dir, tmp_path, **{"ray": {"address": "auto", "verbose": 0}})
    line = refused(sweep_main, [str(path), "--quiet"], capsys)
    assert "ray.address='auto'" in line and "ray start --head" in line, line
    assert_nothing_written(outputs)


def test_preflight_ray_auto_resolved_to_a_malformed_address(demo_dir, tmp_path, capsys,
                                                            monkeypatch):
    """RAY_ADDRESS is read at pre-flight, not with the config: a malformed one ('localhost',
    no port) was Ray's own ValueError at ray.init, exit 1."""
    monkeypatch.setenv("RAY_ADDRESS", "localhost")
    path, outputs = setup(demo_dir, tmp_path, **{"ray": {"address": "auto", "verbose": 0}})
    line = refused(sweep_main, [str(path), "--quiet"], capsys)
    assert "ray.address='auto' resolved to 'localhost'" in line and "HOST:PORT" in line, line
    assert_nothing_written(outputs)


def test_preflight_ray_auto_resolves_to_the_recorded_cluster(demo_dir, tmp_path, capsys,
                                                             monkeypatch):
    """`auto` names the cluster `ray start` recorded; a dead one is refused like an address."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("ray._private.utils.read_ray_address",
                        lambda temp_dir=None: "127.0.0.1:9")
    path, outputs = setup(demo_dir, tmp_path, **{"ray": {"address": "auto", "verbose": 0}})
    line = refused(sweep_main, [str(path), "--quiet"], capsys)
    assert "'127.0.0.1:9'" in line and "nothing answers" in line, line
    assert_nothing_written(outputs)
