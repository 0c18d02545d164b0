"""Fold assignment: stratified, deterministic, the reference call, written once and checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from sketchtune.errors import DataError
from sketchtune.folds import load_or_make_folds, make_folds


def train_df(n_classes: int = 7, seed: int = 0) -> pd.DataFrame:
    """29-31 rows per class, as in the competition, in a shuffled order."""
    rng = np.random.default_rng(seed)
    targets = np.concatenate([np.full(29 + c % 3, c) for c in range(n_classes)])
    targets = rng.permutation(targets)
    return pd.DataFrame({
        "class_name": [f"n{t:08d}" for t in targets],
        "image_path": [f"train/n{t:08d}/{i}.JPEG" for i, t in enumerate(targets)],
        "target": targets.astype(np.int64),
    })


def test_make_folds_is_stratified():
    folds = make_folds(train_df(), 5, 42)
    counts = pd.crosstab(folds["target"], folds["fold"]).to_numpy()
    assert counts.shape == (7, 5)
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()


def test_make_folds_disjoint_and_covering():
    df = train_df()
    folds = make_folds(df, 5, 42)
    assert list(folds.columns) == ["image_path", "target", "fold"]
    assert folds["image_path"].tolist() == df["image_path"].tolist()
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert folds["image_path"].is_unique  # one fold per row: disjoint and covering


def test_make_folds_is_deterministic_and_seeded():
    df = train_df()
    a, b = make_folds(df, 5, 42), make_folds(df, 5, 42)
    pd.testing.assert_frame_equal(a, b)
    assert not a["fold"].equals(make_folds(df, 5, 7)["fold"])


def test_make_folds_matches_reference_stratified_kfold_call():
    df = train_df()
    want = np.full(len(df), -1)
    for k, (_, val) in enumerate(
        StratifiedKFold(n_splits=5, shuffle=True, random_state=42).split(df, df.target)
    ):
        want[val] = k
    np.testing.assert_array_equal(make_folds(df)["fold"].to_numpy(), want)


def test_make_folds_refuses_class_smaller_than_n_splits():
    df = train_df(3)
    df = df[~((df["target"] == 2) & (df.index % 10 != 0))]  # class 2 keeps a handful of rows
    n = int((df["target"] == 2).sum())
    with pytest.raises(DataError, match=f"class 'n00000002' has {n} row"):
        make_folds(df, n + 1, 42)


def test_make_folds_error_names_the_actual_train_file():
    df = train_df(3)
    df = df[~((df["target"] == 2) & (df.index % 10 != 0))]
    n = int((df["target"] == 2).sum())
    with pytest.raises(DataError, match=r"^/data/labels_v2\.csv: class 'n00000002'") as e:
        make_folds(df, n + 1, 42, source=Path("/data/labels_v2.csv"))
    assert "train.csv" not in str(e.value)


def test_make_folds_class_size_check_falls_back_to_target_without_class_name():
    df = train_df(3).drop(columns="class_name")
    df = df[~((df["target"] == 1) & (df.index % 10 != 0))]
    n = int((df["target"] == 1).sum())
    with pytest.raises(DataError, match=f"t.csv: class 1 has {n} row"):
        make_folds(df, n + 1, 42, source="t.csv")


def test_load_or_make_folds_writes_once_and_reads_back(tmp_path: Path):
    df = train_df()
    path = tmp_path / "folds" / "k5_seed42.csv"
    made = load_or_make_folds(df, path, 5, 42)
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    stamp = path.stat().st_mtime_ns
    again = load_or_make_folds(df, path, 5, 42)
    pd.testing.assert_frame_equal(made, again)
    assert path.stat().st_mtime_ns == stamp
    # The file is data keyed by image_path: another row order gets the same assignment.
    shuffled = df.sample(frac=1.0, random_state=1)
    got = load_or_make_folds(shuffled, path, 5, 42).set_index("image_path")["fold"]
    assert got.to_dict() == made.set_index("image_path")["fold"].to_dict()


@pytest.mark.parametrize("change", ["target", "rows", "n_splits"])
def test_load_or_make_folds_refuses_mismatching_file(tmp_path: Path, change: str):
    df = train_df()
    path = tmp_path / "folds.csv"
    load_or_make_folds(df, path, 5, 42)
    n_splits = 5
    if change == "target":
        df.loc[df["target"] == 1, "target"] = 99
    elif change == "rows":
        df = df.iloc[:-3]
    else:
        n_splits = 4
    with pytest.raises(DataError, match=rf"{path.name}: .*delete it to re-split"):
        load_or_make_folds(df, path, n_splits, 42)


def test_load_or_make_folds_mismatch_names_the_train_file(tmp_path: Path):
    df = train_df()
    path = tmp_path / "folds.csv"
    load_or_make_folds(df, path, 5, 42)
    with pytest.raises(DataError, match=r"does not match /data/my_train\.csv "):
        load_or_make_folds(df.iloc[:-3], path, 5, 42, source=Path("/data/my_train.csv"))


def test_load_or_make_folds_refuses_unreadable_file(tmp_path: Path):
    path = tmp_path / "folds.csv"
    path.write_text("image_path,fold\na,0\n")
    with pytest.raises(DataError, match="missing column 'target'"):
        load_or_make_folds(train_df(), path, 5, 42)


def test_make_folds_refuses_two_spellings_of_one_image():
    # They would land in two folds: the same image in training and validation.
    df = train_df()
    df.loc[1, "image_path"] = "./" + df.loc[0, "image_path"]
    df.loc[1, "target"] = df.loc[0, "target"]
    with pytest.raises(DataError, match=r"image_path 'train/.*' appears twice \(spelt "):
        make_folds(df, 5, 42)


def test_load_or_make_folds_matches_a_file_written_with_unnormalised_paths(tmp_path: Path):
    df = train_df()
    path = tmp_path / "folds.csv"
    made = load_or_make_folds(df, path, 5, 42)
    old = pd.read_csv(path)
    old["image_path"] = "./" + old["image_path"].str.replace("/", "//")
    old.to_csv(path, index=False)
    again = load_or_make_folds(df, path, 5, 42)
    pd.testing.assert_frame_equal(made, again)
    assert again["image_path"].tolist() == df["image_path"].tolist()


def test_load_or_make_folds_refuses_a_file_with_one_image_twice(tmp_path: Path):
    df = train_df()
    path = tmp_path / "folds.csv"
    load_or_make_folds(df, path, 5, 42)
    text = path.read_text().splitlines()
    first = text[1].split(",")
    path.write_text("\n".join(text + [",".join(["./" + first[0], *first[1:]])]) + "\n")
    with pytest.raises(DataError, match=rf"{path.name}: image_path .* appears twice .*delete it"):
        load_or_make_folds(df, path, 5, 42)
