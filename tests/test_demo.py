"""The demo data set: competition layout, valid CSVs, determinism and idempotence."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pandas as pd
import pytest

from sketchtune.data import read_test_csv, read_train_csv
from sketchtune.demo import main, make_demo

SMALL = dict(seed=0, classes=3, per_class=6, test_per_class=2, size=32)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert make_demo(out, **SMALL) is True
    return out


def test_make_demo_competition_layout(demo):
    train = read_train_csv(demo / "train.csv", demo)  # the real validator accepts it
    test = read_test_csv(demo / "test.csv", demo)
    header = pd.read_csv(demo / "train.csv").columns.tolist()
    assert header == ["class_name", "image_path", "target"]
    assert pd.read_csv(demo / "test.csv").columns.tolist() == ["image_path"]
    labels = pd.read_csv(demo / "test_labels.csv")
    assert labels.columns.tolist() == ["image_path", "target"]
    assert labels["image_path"].tolist() == test["image_path"].tolist()
    assert len(train) == 18 and len(test) == 6
    assert train.groupby("class_name")["target"].nunique().eq(1).all()
    assert all(p.startswith(f"train/{c}/") and p.endswith(".JPEG")
               for c, p in zip(train["class_name"], train["image_path"], strict=True))
    assert all(p.startswith("test/") for p in test["image_path"])
    assert json.loads((demo / "demo.json").read_text())["seed"] == 0
    assert not list(demo.parent.glob(".*tmp")), "the temporary folder is gone"


def test_make_demo_mixes_grey_and_colour_files(demo):
    channels = {cv2.imread(str(demo / p), cv2.IMREAD_UNCHANGED).ndim
                for p in pd.read_csv(demo / "train.csv")["image_path"]}
    assert channels == {2, 3}
    img = cv2.imread(str(demo / "train/n00000000/img_0000.JPEG"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (32, 32) and img[0, 0] > 200  # white paper at the corner


def test_make_demo_same_seed_same_bytes(demo, tmp_path):
    again = tmp_path / "again"
    make_demo(again, **SMALL)
    assert files(again) == files(demo)
    other = tmp_path / "other"
    make_demo(other, **{**SMALL, "seed": 1})
    assert files(other) != files(demo)


def test_make_demo_second_run_does_nothing(demo, capsys):
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("*")}
    assert make_demo(demo, **SMALL) is False
    args = ["--out", str(demo), "--classes", "3", "--per-class", "6", "--test-per-class", "2",
            "--size", "32"]
    assert main(args) == 0
    assert "already there" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*")} == before


def test_demo_main_refuses_different_settings_in_one_line(demo, capsys):
    assert main(["--out", str(demo), "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a different demo" in err


def test_demo_main_refuses_bad_argument(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "d"), "--classes", "11"]) == 2
    assert "--classes must be in [2, 10]" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
