"""Config loading: typos, types and ranges are one line naming the key, the value and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sketchtune.config import (
    ConfigError,
    SweepConfig,
    TrainConfig,
    candidate_id,
    load_config,
    parse_overrides,
    with_train_overrides,
)

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_load_config_shipped_configs_validate():
    for name in ("sweep.yaml", "imagenet_sketch.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert isinstance(cfg, SweepConfig)
        assert cfg.data.train_csv.is_absolute() and cfg.storage_path.is_absolute()


def test_load_config_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(tmp_path, "data: {train_csv: d/train.csv}\n"))
    assert cfg.data.train_csv == tmp_path / "d/train.csv"
    assert cfg.data.image_root == tmp_path / "d"
    assert cfg.data.folds_csv == tmp_path / "d/folds/k5_seed42.csv"
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cfg.sweep_dir == tmp_path / "sweeps" / "demo"


@pytest.mark.parametrize("text, key", [
    ("train: {optim: {lrr: 0.1}}\n", "train.optim.lrr"),
    ("train: {optim: {lr: -1}}\n", "train.optim.lr"),
    ("train: {epochs: many}\n", "train.epochs"),
    ("data: {n_folds: 1}\n", "data.n_folds"),
    ("train: {aug: {unsharp_kernel: 4}}\n", "train.aug.unsharp_kernel"),
    ("search: {space: {optim.lr: {type: loguniform, low: 0, high: 1}}}\n", "search.space"),
    ("name: 'a b'\n", "name"),
    ("storage_path: s3://bucket/sweeps\n", "storage_path"),
])
def test_load_config_error_names_key_value_and_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and key in msg and "\n" not in msg


def test_load_config_error_shows_the_bad_value(tmp_path):
    with pytest.raises(ConfigError, match=r"got -1"):
        load_config(write(tmp_path, "train: {optim: {lr: -1}}\n"))


def test_load_config_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_load_config_overrides_are_parsed_and_validated(tmp_path):
    path = write(tmp_path, "")
    cfg = load_config(path, ["train.optim.lr=3e-4", "train.tta_hflip=true", "data.n_folds=3"])
    assert cfg.train.optim.lr == 3e-4 and cfg.train.tta_hflip is True and cfg.data.n_folds == 3
    with pytest.raises(ConfigError, match=r"--set.*train\.optim\.lr"):
        load_config(path, ["train.optim.lr=-2"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.optim.lr"])


def test_with_train_overrides_rejects_unknown_key():
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        with_train_overrides(TrainConfig(), {"optim.lrr": 1.0}, "space")


def test_candidate_id_is_stable_and_config_sensitive():
    a = TrainConfig()
    assert candidate_id(a) == candidate_id(TrainConfig())
    b = with_train_overrides(a, {"optim.lr": 0.5}, "t")
    assert candidate_id(a) != candidate_id(b)
    assert len(candidate_id(a)) == 10


def test_candidate_id_ignores_weights_file_folder():
    a = with_train_overrides(TrainConfig(), {"model.weights_file": "/x/w.safetensors"}, "t")
    b = with_train_overrides(TrainConfig(), {"model.weights_file": "/y/w.safetensors"}, "t")
    assert candidate_id(a) == candidate_id(b)


@pytest.mark.parametrize("space, words", [
    ({"batch_size": {"type": "uniform", "low": 16, "high": 64}},
     ("search.space['batch_size']", "uniform", "integer")),
    ({"epochs": {"type": "choice", "values": ["1", "2"]}},
     ("search.space['epochs']", "'1'", "int")),
    ({"model.name": {"type": "loguniform", "low": 1, "high": 3}},
     ("search.space['model.name']", "choice")),
    ({"model.pretrained": {"type": "choice", "values": [True, 0]}},
     ("search.space['model.pretrained']", "bool")),
])
def test_search_dimension_must_fit_its_field_type(tmp_path, space, words):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"search": {"enabled": True, "space": space}}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg, msg


def test_search_dimensions_of_the_right_type_pass(tmp_path):
    space = {"batch_size": {"type": "int", "low": 16, "high": 64},
             "epochs": {"type": "choice", "values": [2, 3]},
             "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
             "model.drop_path_rate": {"type": "choice", "values": [None, 0.1]},
             "model.name": {"type": "choice", "values": ["test_resnet", "test_vit"]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"search": {"enabled": True, "space": space}}))
    assert set(load_config(path).search.space) == set(space)


def test_grace_period_above_epochs_is_refused_naming_both_keys(tmp_path):
    space = {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 1},
                                    "search": {"enabled": True, "grace_period": 2,
                                               "space": space}}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "search.grace_period=2" in msg and "train.epochs" in msg and str(path) in msg
    # An epochs dimension that reaches the grace period is enough; no search, no ASHA check.
    ok = {"train": {"epochs": 1}, "search": {"enabled": True, "grace_period": 2, "space": {
        **space, "epochs": {"type": "int", "low": 1, "high": 2}}}}
    path.write_text(yaml.safe_dump(ok))
    assert load_config(path).search.grace_period == 2
    path.write_text(yaml.safe_dump({"train": {"epochs": 1},
                                    "search": {"enabled": False, "grace_period": 2}}))
    assert load_config(path).train.epochs == 1
