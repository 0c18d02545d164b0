"""Candidate ids and prediction sets: today's ids never move, new keys enter only when used,
and the training features are config keys that validate, search and name their key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sketchtune.config import (
    TrainConfig,
    candidate_id,
    load_config,
    prediction_sets,
    view_img_size,
    with_train_overrides,
)
from sketchtune.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# Printed by `python -c "from sketchtune.config import TrainConfig, candidate_id;
# print(candidate_id(TrainConfig()))"` (and the like) at fb78821, before these keys existed:
# stores, resumed sweeps and the demo's submission are keyed by them.
IDS_AT_FB78821 = {
    "default": "7eeb7d3efc",
    "tta_vit": "5aed58088b",  # tta_hflip true, optim.lr 3e-4, model.name test_vit
    "configs/sweep.yaml": "d8db4fc155",
}


def test_candidate_id_of_configs_without_the_new_keys_is_the_one_of_fb78821():
    assert candidate_id(TrainConfig()) == IDS_AT_FB78821["default"]
    tta = {"tta_hflip": True, "optim": {"lr": 3e-4}, "model": {"name": "test_vit"}}
    assert candidate_id(TrainConfig.model_validate(tta)) == IDS_AT_FB78821["tta_vit"]
    demo = load_config(ROOT / "configs" / "sweep.yaml").train
    assert candidate_id(demo) == IDS_AT_FB78821["configs/sweep.yaml"]


@pytest.mark.parametrize("key, value", [
    ("mixup.mixup_alpha", 0.0), ("mixup.mode", "batch"), ("ema.enabled", False),
    ("ema.decay", 0.9998), ("accum_steps", 1), ("optim.layer_decay", None),
    ("compile", True), ("views", ["hflip", "scale"]),  # these two change no weight: never in it
])
def test_candidate_id_ignores_new_keys_at_their_default_and_keys_that_change_no_weight(key,
                                                                                       value):
    t = with_train_overrides(TrainConfig(), {key: value}, "t")
    assert candidate_id(t) == IDS_AT_FB78821["default"]


@pytest.mark.parametrize("key, value", [
    ("mixup.cutmix_alpha", 1.0), ("ema.enabled", True), ("accum_steps", 2),
    ("optim.layer_decay", 0.75),
])
def test_candidate_id_changes_when_a_new_key_is_used(key, value):
    t = with_train_overrides(TrainConfig(), {key: value}, "t")
    assert candidate_id(t) != IDS_AT_FB78821["default"]
    # Every field of a used section enters: two mixups that differ only in prob differ.
    if key == "mixup.cutmix_alpha":
        other = with_train_overrides(t, {"mixup.prob": 0.5}, "t")
        assert candidate_id(other) != candidate_id(t)


def test_prediction_sets_are_the_candidate_first_then_its_views_then_the_ema_weights():
    t = with_train_overrides(TrainConfig(), {"views": ["scale", "plain", "hflip"],
                                             "ema.enabled": True}, "t")
    cid = candidate_id(t)
    sets = prediction_sets(t)
    assert [s.id for s in sets] == [cid, f"{cid}-scale", f"{cid}-hflip", f"{cid}-ema",
                                    f"{cid}-ema-scale", f"{cid}-ema-hflip"]
    assert {s.base for s in sets} == {cid}
    assert [s.view for s in sets[:3]] == ["plain", "scale", "hflip"]  # plain: its own view
    assert [s.weights for s in sets] == ["raw"] * 3 + ["ema"] * 3
    # With tta_hflip the candidate's own view is hflip_avg; plain is then a view of its own.
    tta = with_train_overrides(t, {"tta_hflip": True, "views": ["plain", "hflip_avg"],
                                   "ema.enabled": False}, "t")
    assert [(s.id.removeprefix(candidate_id(tta)), s.view) for s in prediction_sets(tta)] == \
        [("", "hflip_avg"), ("-plain", "plain")]
    assert [s.id for s in prediction_sets(TrainConfig())] == [IDS_AT_FB78821["default"]]


def test_scale_view_is_a_larger_multiple_of_8():
    assert view_img_size("plain", 224) == 224
    assert view_img_size("scale", 224) == 256
    assert view_img_size("scale", 64) == 72
    assert view_img_size("scale", 16) == 24  # never the same size as the plain view


def _load(tmp_path: Path, train: dict, search: dict | None = None):
    path = tmp_path / "c.yaml"
    doc = {"train": train, **({"search": {"enabled": True, "space": search}} if search else {})}
    path.write_text(yaml.safe_dump(doc))
    return path, lambda: load_config(path)


@pytest.mark.parametrize("train, key", [
    ({"mixup": {"mixup_alpha": -0.1}}, "train.mixup.mixup_alpha"),
    ({"mixup": {"prob": 1.5}}, "train.mixup.prob"),
    ({"mixup": {"mode": "pairs"}}, "train.mixup.mode"),
    ({"mixup": {"cutmix_alpha": 1.0}, "batch_size": 33}, "batch_size must be even"),
    ({"ema": {"decay": 1.0}}, "train.ema.decay"),
    ({"ema": {"enabled": "yes"}}, "train.ema.enabled"),
    ({"accum_steps": 0}, "train.accum_steps"),
    ({"optim": {"layer_decay": 1.2}}, "train.optim.layer_decay"),
    ({"optim": {"layer_decay": 0.8}, "sched": {"name": "none"}}, "optim.layer_decay needs"),
    ({"views": ["hflip", "flip"]}, "train.views"),
    ({"views": ["hflip", "hflip"]}, "train.views"),
    ({"compile": 1}, "train.compile"),
])
def test_new_keys_are_validated_at_load_in_one_line_naming_the_key(tmp_path, train, key):
    path, load = _load(tmp_path, train)
    with pytest.raises(ConfigError) as e:
        load()
    msg = str(e.value)
    assert key in msg and str(path) in msg and "\n" not in msg


def test_new_keys_are_search_dimensions_by_dotted_key(tmp_path):
    space = {"mixup.cutmix_alpha": {"type": "uniform", "low": 0.0, "high": 1.0},
             "mixup.mode": {"type": "choice", "values": ["batch", "elem"]},
             "ema.enabled": {"type": "choice", "values": [True, False]},
             "optim.layer_decay": {"type": "choice", "values": [None, 0.75]},
             "accum_steps": {"type": "int", "low": 1, "high": 4}}
    _, load = _load(tmp_path, {}, space)
    assert set(load().search.space) == set(space)
    _, load = _load(tmp_path, {}, {"accum_steps": {"type": "uniform", "low": 1, "high": 4}})
    with pytest.raises(ConfigError, match=r"accum_steps.*integer"):
        load()
