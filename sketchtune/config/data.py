"""Where the data lives and how it is read (`DataConfig`); not part of the candidate id."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from .fields import SEED, Int, StorageLocation, Strict

__all__ = ["DataConfig"]


class DataConfig(Strict):
    """Where the data lives and how it is read. Not part of the candidate hash.

    Relative paths are relative to the working directory the command runs from (made absolute
    when the config is loaded, since Ray runs each trial in a directory of its own).
    """

    train_csv: Path = Field(
        Path("data/demo/train.csv"),
        description="`class_name,image_path,target`, one row per labelled image (targets "
        "0..C-1). Default: the demo data that `python -m sketchtune.demo` writes.",
    )
    test_csv: Path = Field(
        Path("data/demo/test.csv"),
        description="`image_path`, one row per image to predict; the submission follows its "
        "order. Default: the demo data's.",
    )
    image_root: Path | None = Field(
        None,
        description="Folder that train `image_path`s are relative to. null: the train CSV's "
        "folder, the competition layout (`train/<class>/<file>`).",
    )
    test_image_root: Path | None = Field(
        None,
        description="Folder that test `image_path`s are relative to. null: `image_root`. (Some "
        "releases of the competition data list train paths relative to train/ and test paths "
        "relative to test/.)",
    )
    n_folds: Int = Field(
        5, ge=2,
        description="Folds of the cross-validation; every candidate trains once per fold. 5: "
        "the reference pipeline's StratifiedKFold(5); with ~30 images a class it leaves ~6 a "
        "class in each validation fold.",
    )
    fold_seed: Int = Field(
        42, **SEED,
        description="`random_state` of the StratifiedKFold split. 42: the reference "
        "pipeline's, so the same CSV gets the same folds.",
    )
    folds_csv: StorageLocation | None = Field(
        None,
        description="The fold of each train row, written once and read by every trial (a "
        "stale file is refused). null: `<train_csv folder>/folds/k{n_folds}_seed{fold_seed}.csv`, "
        "so another split gets a file of its own. A storage URI (`s3://bucket/folds.csv`) "
        "shares one file across a cluster's nodes.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where decoded, resized images are cached (one memory-mapped file per "
        "image list and size, shared by every trial). null: `<train_csv folder>/.cache`, beside "
        "the data it is made from.",
    )
    num_workers: Int = Field(
        2, ge=0,
        description="DataLoader worker processes per trial. Images come decoded from the "
        "cache, so workers only augment: 2 overlap that with training; on a 2-core machine 0 "
        "is fastest (the demo config; benchmarks/RESULTS-loader.md).",
    )

    @model_validator(mode="after")
    def _defaults(self) -> DataConfig:
        if self.image_root is None:
            self.image_root = self.train_csv.parent
        if self.test_image_root is None:
            self.test_image_root = self.image_root
        if self.folds_csv is None:
            name = f"k{self.n_folds}_seed{self.fold_seed}.csv"
            self.folds_csv = self.train_csv.parent / "folds" / name
        if self.cache_dir is None:
            self.cache_dir = self.train_csv.parent / ".cache"
        return self

