"""Config loading: typos, types and ranges are one line naming the key, the value and the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ensemble_search.config import ensemble_config
from sketchtune.config import (
    SweepConfig,
    TrainConfig,
    candidate_id,
    load_config,
    parse_overrides,
    read_yaml,
    with_train_overrides,
)
from sketchtune.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def load_with_ensemble(path: Path) -> SweepConfig:
    """What optimize reads: the sweep's config, and its `ensemble:` section checked too."""
    cfg = load_config(path)
    ensemble_config(cfg, str(path))
    return cfg


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
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # else it is the default
    cfg = load_config(write(tmp_path, "data: {train_csv: d/train.csv}\n"))
    assert cfg.data.train_csv == tmp_path / "d/train.csv"
    assert cfg.data.image_root == tmp_path / "d"
    assert cfg.data.folds_csv == tmp_path / "d/folds/k5_seed42.csv"
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cfg.sweep_dir == tmp_path / "sweeps" / "demo"


def test_load_config_tracking_uri_defaults_to_mlflow_tracking_uri(tmp_path, monkeypatch):
    """MLflow's own default comes from the environment first: an exported server is not
    bypassed for a local file; a tracking_uri in the config still wins over it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert load_config(write(tmp_path, "name: a\n")).tracking_uri == "http://mlflow.example:5000"
    cfg = load_config(write(tmp_path, "name: a\ntracking_uri: sqlite:///x.db\n"))
    assert cfg.tracking_uri == "sqlite:///x.db"


@pytest.mark.parametrize("name", [".", "..", "...", "a/b", ""])
def test_load_config_sweep_name_that_is_not_a_folder_of_its_own_is_refused(tmp_path, name):
    """'.' would put the sweep in storage_path itself, '..' in the folder above it."""
    with pytest.raises(ConfigError, match="name"):
        load_config(write(tmp_path, f"name: {name!r}\n"))
    assert load_config(write(tmp_path, "name: v1.2_a-b\n")).name == "v1.2_a-b"


@pytest.mark.parametrize("text, key", [
    ("train: {optim: {lrr: 0.1}}\n", "train.optim.lrr"),
    ("train: {optim: {lr: -1}}\n", "train.optim.lr"),
    ("train: {epochs: many}\n", "train.epochs"),
    ("data: {n_folds: 1}\n", "data.n_folds"),
    ("train: {aug: {unsharp_kernel: 4}}\n", "train.aug.unsharp_kernel"),
    ("search: {space: {optim.lr: {type: loguniform, low: 0, high: 1}}}\n", "search.space"),
    ("name: 'a b'\n", "name"),
    ("storage_path: s3:///no-bucket\n", "storage_path"),
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
    path = write(tmp_path, "name: demo\n")
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


# ---------------------------------------------------------------- values YAML or pydantic coerce


@pytest.mark.parametrize("text, key", [
    ("train: {epochs: 3}\ntrain: {epochs: 4}\n", "'train' at line 2 (first at line 1)"),
    ("train:\n  epochs: 50\n  batch_size: 8\n  epochs: 1\n",
     "'epochs' at line 4 (first at line 2)"),
    ("search: {space: {optim.lr: {type: uniform, low: 0.1, low: 0.2, high: 1}}}\n", "'low'"),
])
def test_load_config_duplicate_key_is_refused_with_its_lines(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: duplicate key {key}") and "\n" not in msg


def test_load_config_merge_key_may_be_overridden(tmp_path):
    # `<<: *anchor` then a key beside it is YAML's way to override, not a duplicate.
    text = "x-base: &b {epochs: 3, batch_size: 8}\ntrain:\n  <<: *b\n  epochs: 5\n"
    raw = read_yaml(write(tmp_path, text))
    assert raw["train"] == {"epochs": 5, "batch_size": 8}


@pytest.mark.parametrize("value", ["yes", "true", "3.0", "'3'", "1e0"])
def test_load_config_int_fields_take_ints_only(tmp_path, value):
    # Lax pydantic reads each of these as an int (yes -> 1): a config saying something else.
    path = write(tmp_path, f"train: {{epochs: {value}}}\n")
    with pytest.raises(ConfigError, match=r"train\.epochs: Input should be a valid integer"):
        load_config(path)


@pytest.mark.parametrize("text, key", [
    ("train: {tta_hflip: 1}\n", "train.tta_hflip"),
    ("train: {model: {pretrained: 'yes'}}\n", "train.model.pretrained"),
    ("ensemble: {temperature: 0}\n", "ensemble.temperature"),
    ("train: {optim: {lr: true}}\n", "train.optim.lr"),
    ("train: {optim: {lr: .nan}}\n", "train.optim.lr"),
    ("train: {optim: {weight_decay: .inf}}\n", "train.optim.weight_decay"),
    ("search: {space: {loss.gamma: {type: uniform, low: .nan, high: 1}}}\n", "low"),
    ("ray: {max_concurrent_trials: 2.0}\n", "ray.max_concurrent_trials"),
])
def test_load_config_bools_and_floats_are_not_coerced(tmp_path, text, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_with_ensemble(write(tmp_path, text))


def test_load_config_float_fields_accept_yaml_1_1_exponents(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-3` without a dot as a string; users write it, so it works.
    cfg = load_config(write(tmp_path, "train: {optim: {lr: 1e-3}, sched: {min_lr: 2E-7}}\n"
                                      "search: {space: {optim.lr: {type: loguniform, "
                                      "low: 1e-4, high: 1e-2}}}\n"))
    assert cfg.train.optim.lr == 1e-3 and cfg.train.sched.min_lr == 2e-7
    assert cfg.search.space["optim.lr"].low == 1e-4
    assert load_config(write(tmp_path, "name: x\n"), ["train.optim.lr=3e-4"]).train.optim.lr == 3e-4


@pytest.mark.parametrize("key", ["train.seed", "data.fold_seed", "ensemble.seed"])
def test_load_config_negative_seed_is_refused(tmp_path, key):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=re.escape(key) + r".*greater than or equal to 0"):
        load_with_ensemble(write(tmp_path, f"{section}: {{{name}: -1}}\n"))
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_with_ensemble(write(tmp_path, f"{section}: {{{name}: {2**32}}}\n"))


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "{}\n"])
def test_load_config_empty_file_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"empty config; copy configs/sweep\.yaml") as e:
        load_config(path, ["train.epochs=1"])
    assert str(e.value).startswith(str(path))


def test_load_config_folder_is_named_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"is a folder") as e:
        load_config(tmp_path)
    assert str(e.value).startswith(str(tmp_path)) and "not found" not in str(e.value)


# ---------------------------------------------------------------- --set into search.space


SPACE = ("name: x\nsearch: {space: {optim.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}, "
         "model.name: {type: choice, values: [test_resnet]}}}\n"
         "candidates: [{optim.lr: 0.1}]\n")


def test_override_reaches_a_field_of_a_dotted_search_dimension(tmp_path):
    cfg = load_config(write(tmp_path, SPACE), ["search.space.optim.lr.high=0.05",
                                               "search.space.model.name.values=[test_vit]"])
    assert cfg.search.space["optim.lr"].high == 0.05 and cfg.search.space["optim.lr"].low == 1e-4
    assert cfg.search.space["model.name"].values == ["test_vit"]


def test_override_adds_a_whole_dimension_or_replaces_the_space(tmp_path):
    path = write(tmp_path, SPACE)
    cfg = load_config(path, ["search.space.loss.gamma={type: uniform, low: 0, high: 2}"])
    assert set(cfg.search.space) == {"optim.lr", "model.name", "loss.gamma"}
    cfg = load_config(path, ["search.space={aug.strength: {type: uniform, low: 0.2, high: 1}}"])
    assert set(cfg.search.space) == {"aug.strength"}


def test_override_of_an_unknown_dimension_says_how_to_add_one(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, SPACE), ["search.space.optim.momentum.high=0.99"])
    msg = str(e.value)
    assert "no dimension 'optim.momentum'" in msg and "--set 'search.space.optim.momentum={" in msg
    assert "Field required" not in msg and "\n" not in msg


def test_override_reaches_a_fixed_candidate_by_index(tmp_path):
    path = write(tmp_path, SPACE)
    cfg = load_config(path, ["candidates.0.optim.lr=0.5", "candidates.0.loss.gamma=1.0"])
    assert cfg.candidates == [{"optim.lr": 0.5, "loss.gamma": 1.0}]
    with pytest.raises(ConfigError, match=r"'candidates' is a list of 1"):
        load_config(path, ["candidates.1.optim.lr=0.5"])


def test_override_with_a_duplicate_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--set .*duplicate key 'a'"):
        load_config(write(tmp_path, SPACE), ["search.space={a: 1, a: 2}"])


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
