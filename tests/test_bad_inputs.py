"""Bad input battery: every CLI, fed one broken input at a time, fails with one clear line.

Each case builds a valid setup in `tmp_path`, breaks exactly one thing, runs the CLI and
checks: exit status 2, stderr is one line naming the problem and the offending file, no
traceback, and nothing under `tmp_path` written or changed (paths, sizes, mtimes, hashes).
Most cases call `main(argv)` in-process; a few run `python -m ...` to prove the same holds
in a real process (C libraries writing to fd 2, logging, the real exit status).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from sketchtune.config import apply_overrides
from tests.data_fixtures import make_dataset, sketch
from tests.ensemble_fixtures import make_sweep, softmax, write_candidate

ROOT = Path(__file__).resolve().parent.parent

MODULES = {
    "train": "sketchtune.train",
    "sweep": "sketchtune.sweep",
    "optimize": "ensemble_search.optimize",
    "predict": "ensemble_search.predict",
}


# ---------------------------------------------------------------- setups


@dataclass
class Setup:
    """A valid setup; a case breaks one thing in it and returns (argv, offending path)."""

    root: Path
    config: Path
    data: Path = Path()  # train/test CSVs and images (train setups)
    sweep: object = None  # ensemble_fixtures.Sweep (ensemble setups)
    raw: dict = field(default_factory=dict)  # the config as written (train setups)

    @property
    def train_csv(self) -> Path:
        return self.data / "train.csv"

    @property
    def test_csv(self) -> Path:
        return self.data / "test.csv"

    def rewrite_config(self, **dotted) -> Path:
        self.raw = apply_overrides(self.raw, dotted)
        self.config.write_text(yaml.safe_dump(self.raw, sort_keys=False))
        return self.config

    def train_rows(self) -> pd.DataFrame:
        return pd.read_csv(self.train_csv, dtype=str, keep_default_na=False)

    def write_train(self, df: pd.DataFrame) -> Path:
        df.to_csv(self.train_csv, index=False)
        return self.train_csv

    def image(self, i: int = 0) -> Path:
        return self.data / self.train_rows()["image_path"].iloc[i]


def train_setup(root: Path) -> Setup:
    """3 classes x 4 train sketches, 4 test sketches, a 2-fold config; all under `root`."""
    data = root / "data"
    make_dataset(data, n_classes=3, per_class=4, size=32)
    (data / "test").mkdir()
    for i in range(4):
        cv2.imwrite(str(data / "test" / f"{i}.JPEG"), sketch(1000 + i, 32))
    pd.DataFrame({"image_path": [f"test/{i}.JPEG" for i in range(4)]}).to_csv(
        data / "test.csv", index=False)
    raw = {
        "name": "bad",
        "storage_path": str(root / "sweeps"),
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        # folds_csv and cache_dir keep their defaults (under data/): both are checked too.
        "data": {"train_csv": str(data / "train.csv"), "test_csv": str(data / "test.csv"),
                 "n_folds": 2, "num_workers": 0},
        "train": {"model": {"name": "test_resnet", "pretrained": False}, "img_size": 32,
                  "epochs": 1, "batch_size": 8},
        "search": {"enabled": False},
        "ray": {"verbose": 0, "max_failures": 0},
    }
    s = Setup(root, root / "sweep.yaml", data=data, raw=raw)
    s.rewrite_config()
    return s


def ensemble_setup(root: Path, skills: tuple[float, ...] = (2.0, 1.0)) -> Setup:
    """A synthetic store (3 folds, 4 classes, 24 rows, 6 test rows) and ensemble.json."""
    sw = make_sweep(root, skills=skills, n=24, c=4, n_folds=3, n_test=6)
    spec = {"method": "mean", "num_classes": 4, "temperature": 1.0,
            "candidates": [{"candidate_id": cid, "weight": 1.0 / len(sw.ids)} for cid in sw.ids]}
    out = sw.sweep_dir / "ensemble"
    out.mkdir(parents=True)
    (out / "ensemble.json").write_text(json.dumps(spec))
    return Setup(root, sw.config, sweep=sw)


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    cli: str  # train | sweep | optimize | predict
    breaks: Callable[[Setup], tuple[list[str], Path]]  # -> (extra argv, offending file)
    words: tuple[str, ...]  # each must appear in the error line (case-insensitive)
    subprocess: bool = False

    @property
    def setup(self) -> Callable[[Path], Setup]:
        return train_setup if self.cli in ("train", "sweep") else ensemble_setup


def _cfg(**dotted):
    def breaks(s: Setup):
        return [], s.rewrite_config(**dotted)
    return breaks


def _cfg_text(text: str):
    def breaks(s: Setup):
        s.config.write_text(text)
        return [], s.config
    return breaks


def _sets(*items: str):
    def breaks(s: Setup):
        return [f"--set={it}" for it in items], s.config
    return breaks


def _train_csv(edit: Callable[[pd.DataFrame], pd.DataFrame]):
    def breaks(s: Setup):
        return [], s.write_train(edit(s.train_rows()))
    return breaks


def _train_bytes(data: bytes):
    def breaks(s: Setup):
        s.train_csv.write_bytes(data)
        return [], s.train_csv
    return breaks


def _test_bytes(data: bytes):
    def breaks(s: Setup):
        s.test_csv.write_bytes(data)
        return [], s.test_csv
    return breaks


def _image_bytes(data: bytes, suffix: str | None = None):
    """Overwrite train image 0 (renamed to `suffix` if given, and the CSV updated)."""
    def breaks(s: Setup):
        img = s.image(0)
        if suffix is not None:
            df = s.train_rows()
            img.unlink()
            img = img.with_suffix(suffix)
            df.loc[0, "image_path"] = img.relative_to(s.data).as_posix()
            s.write_train(df)
        img.write_bytes(data)
        return [], img
    return breaks


def _set_row(col: str, value: str, row: int = 0):
    def edit(df):
        df.loc[row, col] = value
        return df
    return _train_csv(edit)


def _duplicate_row(df):
    return pd.concat([df, df.iloc[[1]]], ignore_index=True)


def _duplicate_path_other_class(df):
    extra = df[df["target"] == "1"].iloc[[0]].copy()
    extra["image_path"] = df["image_path"].iloc[0]  # class 0's image listed again as class 1
    return pd.concat([df, extra], ignore_index=True)


def _escape_root(s: Setup):
    (s.root / "outside.JPEG").write_bytes(s.image(0).read_bytes())  # it exists: still refused
    df = s.train_rows()
    df.loc[0, "image_path"] = "../outside.JPEG"
    return [], s.write_train(df)


def _missing_image(s: Setup):
    s.image(2).unlink()
    return [], s.train_csv


def _missing_test_image(s: Setup):
    (s.data / "test" / "3.JPEG").unlink()
    return [], s.test_csv


def _zero_byte_image(s: Setup):
    s.image(0).write_bytes(b"")  # found by the cheap check: the CSV and its row are named
    return [], s.train_csv


def _corrupt_test_image(s: Setup):
    img = s.data / "test" / "2.JPEG"
    img.write_bytes(RANDOM)
    return [], img


def _train_csv_missing(s: Setup):
    s.train_csv.unlink()
    return [], s.train_csv


def _config_missing(s: Setup):
    s.config.unlink()
    return [], s.config


def _fold_out_of_range(s: Setup):
    return ["--fold", "5"], s.config


# ensemble setups --------------------------------------------------------------------


def _drop_fold(s: Setup, j: int = 0, k: int = 2) -> Path:
    d = s.sweep.store.candidate_dir(s.sweep.ids[j])
    for ext in ("npz", "json"):
        (d / f"fold{k}.{ext}").unlink()
    return d


def _opt_missing_fold(s: Setup):
    _drop_fold(s, j=0, k=2)
    _drop_fold(s, j=1, k=0)  # no candidate left complete: the line names the store
    return [], s.sweep.store.candidates_dir


def _opt_nan(s: Setup):
    p = s.sweep.probs[0].copy()
    p[5, :] = np.nan
    write_candidate(s.sweep, 0, probs=p)
    k = int(s.sweep.folds[5])
    return [], s.sweep.store.candidate_dir(s.sweep.ids[0]) / f"fold{k}.npz"


def _opt_not_normalised(s: Setup):
    write_candidate(s.sweep, 1, probs=s.sweep.probs[1] * 0.5)
    return [], s.sweep.store.candidate_dir(s.sweep.ids[1])


def _opt_class_count(s: Setup):
    sw, rng = s.sweep, np.random.default_rng(1)
    rows = np.flatnonzero(sw.folds == 1)
    sw.store.write_fold(sw.ids[0], 1, val_keys=sw.keys[rows], val_targets=sw.targets[rows],
                        val_probs=softmax(rng.normal(size=(len(rows), 5))),
                        test_keys=sw.test_keys, test_probs=softmax(rng.normal(size=(6, 5))),
                        manifest={"n_folds": 3, "metrics": {"val_acc": 0.5, "val_loss": 1.0}})
    return [], sw.store.candidate_dir(sw.ids[0]) / "fold1.npz"


def _opt_test_rows(s: Setup):
    sw = s.sweep
    write_candidate(sw, 0, folds=[2], test_probs=sw.test_probs[0, 2][:5],
                    test_keys=sw.test_keys[:5])
    return [], sw.store.candidate_dir(sw.ids[0]) / "fold2.npz"


def _opt_keys_mismatch(s: Setup):
    sw = s.sweep
    rows = np.flatnonzero(sw.folds == 0)
    keys = sw.keys[rows].copy()
    keys[0] = "train/elsewhere.png"  # a row of some other train.csv
    sw.store.write_fold(sw.ids[0], 0, val_keys=keys, val_targets=sw.targets[rows],
                        val_probs=sw.probs[0][rows], test_keys=sw.test_keys,
                        test_probs=sw.test_probs[0, 0],
                        manifest={"n_folds": 3, "metrics": {"val_acc": 0.5, "val_loss": 1.0}})
    return [f"--candidates={sw.ids[0]}"], sw.store.candidate_dir(sw.ids[0])


def _opt_unknown_candidate(s: Setup):
    return ["--candidates=feedbeef00"], s.sweep.store.candidate_dir("feedbeef00")


def _folds_csv(edit: Callable[[pd.DataFrame], pd.DataFrame]):
    def breaks(s: Setup):
        path = s.sweep.folds_csv
        edit(pd.read_csv(path)).to_csv(path, index=False)
        return [], path
    return breaks


def _opt_no_store(s: Setup):
    import shutil

    shutil.rmtree(s.sweep.sweep_dir / "candidates")
    return [], s.sweep.sweep_dir / "candidates"


def _ensemble_json(edit: Callable[[dict], object] | None = None, text: str | None = None):
    def breaks(s: Setup):
        path = s.sweep.sweep_dir / "ensemble" / "ensemble.json"
        if text is not None:
            path.write_text(text)
        else:
            spec = json.loads(path.read_text())
            path.write_text(json.dumps(edit(spec)))
        return [], path
    return breaks


def _spec_unknown_candidate(spec):
    spec["candidates"][1]["candidate_id"] = "gone000000"
    return spec


def _spec_weights(spec):
    spec["candidates"][0]["weight"] = 0.9
    return spec


def _spec_classes(spec):
    spec["num_classes"] = 7
    return spec


def _pred_test_csv_extra_row(s: Setup):
    path = s.sweep.test_csv
    df = pd.read_csv(path)
    pd.concat([df, pd.DataFrame({"image_path": ["test/extra.png"]})]).to_csv(path, index=False)
    return [], path


def _pred_test_csv_bytes(data: bytes):
    def breaks(s: Setup):
        s.sweep.test_csv.write_bytes(data)
        return [], s.sweep.test_csv
    return breaks


def _pred_nan_test(s: Setup):
    sw = s.sweep
    t = sw.test_probs[1, 1].copy()
    t[2, 0] = np.nan
    write_candidate(sw, 1, folds=[1], test_probs=t)
    return [], sw.store.candidate_dir(sw.ids[1]) / "fold1.npz"


def _pred_missing_fold(s: Setup):
    return [], _drop_fold(s, j=1, k=0)


def _loop_arg(option: str):
    """`option` pointing into a symlink that points to itself (a loop `resolve` cannot end)."""
    def breaks(s: Setup):
        os.symlink("loop", s.root / "loop")
        return [option, str(s.root / "loop" / "x")], s.root / "loop" / "x"
    return breaks


def _opt_fold_files_swapped(s: Setup):
    """fold0's files of two candidates swapped: each file is valid, the candidate is not."""
    a, b = (s.sweep.store.candidate_dir(c) for c in s.sweep.ids)
    for ext in ("npz", "json"):
        x, y = a / f"fold0.{ext}", b / f"fold0.{ext}"
        data = x.read_bytes()
        x.write_bytes(y.read_bytes())
        y.write_bytes(data)
    return [], a / "fold0.json"


def _opt_manifest_fold_edited(s: Setup):
    path = s.sweep.store.candidate_dir(s.sweep.ids[1]) / "fold2.json"
    manifest = json.loads(path.read_text())
    manifest["fold"] = 0
    path.write_text(json.dumps(manifest))
    return [], path


def _opt_candidates_twice(s: Setup):
    cid = s.sweep.ids[0]
    return [f"--candidates={cid},{cid}"], s.sweep.store.candidates_dir


def _opt_candidates_empty(s: Setup):
    return ["--candidates=,,"], s.sweep.store.candidates_dir


def _pred_test_csv_duplicate(respell: bool):
    def breaks(s: Setup):
        path = s.sweep.test_csv
        df = pd.read_csv(path)
        extra = df.iloc[[2]].copy()
        if respell:  # the same image under another spelling is the same image
            extra["image_path"] = "./" + extra["image_path"]
        pd.concat([df, extra]).to_csv(path, index=False)
        return [], path
    return breaks


def _uri_arg(option: str, value: str):
    """`option value` where value is no storage URI and no folder a user meant (`gs:/x`)."""
    def breaks(s: Setup):
        return [option, value], Path(value)  # the line names the value as given
    return breaks


def _opt_manifest_num_classes(s: Setup):
    sw = s.sweep
    sw.store.update_manifest(sw.ids[1], 2, num_classes=7)
    return [], sw.store.candidate_dir(sw.ids[1]) / "fold2.npz"


def _opt_val_targets_text(s: Setup):
    npz = s.sweep.store.candidate_dir(s.sweep.ids[0]) / "fold1.npz"
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["val_targets"] = arrays["val_targets"].astype(str)
    np.savez(npz, **arrays)
    return [], npz


def _pred_fold_beyond_n_folds(s: Setup):
    """A fold 3 of a 3-fold candidate (left by a sweep with more folds): predict would
    average it in as a fourth fold model."""
    sw = s.sweep
    rows = np.flatnonzero(sw.folds == 0)
    sw.store.write_fold(sw.ids[1], 3, val_keys=sw.keys[rows], val_targets=sw.targets[rows],
                        val_probs=sw.probs[1][rows], test_keys=sw.test_keys,
                        test_probs=sw.test_probs[1, 0], manifest={"n_folds": 3})
    return [], sw.store.candidate_dir(sw.ids[1])


LATIN1 = "class_name,image_path,target\ncaf\xe9,train/a.JPEG,0\n".encode("latin-1")
BINARY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
RANDOM = np.random.default_rng(0).bytes(3000)

CASES = [
    # ---- train: the config file and --set
    Case("cfg-unknown-key", "train", _cfg(**{"train.optim.lrr": 0.1}), ("lrr", "extra")),
    Case("cfg-wrong-type", "train", _cfg(**{"train.epochs": "three"}), ("epochs", "integer")),
    Case("cfg-out-of-range", "train", _cfg(**{"train.optim.lr": -1.0}), ("lr", "greater")),
    Case("cfg-bad-n-folds", "train", _cfg(**{"data.n_folds": 1}), ("n_folds",)),
    Case("cfg-bad-yaml", "train", _cfg_text("name: [unclosed\ndata: {\n"), ("yaml",)),
    Case("cfg-is-a-list", "train", _cfg_text("- name: demo\n- data: {}\n"), ("mapping", "list")),
    Case("cfg-missing", "train", _config_missing, ("not found",)),
    Case("set-without-equals", "train", _sets("train.epochs"), ("train.epochs", "key=value")),
    Case("set-bad-value", "train", _sets("train.batch_size=many"), ("batch_size", "integer")),
    Case("set-into-a-value", "train", _sets("train.epochs.x=1"), ("train.epochs", "section")),
    Case("fold-out-of-range", "train", _fold_out_of_range, ("--fold", "n_folds")),
    Case("cfg-name-dot-dot", "train", _cfg(name=".."), ("name", "'..'")),
    Case("sweep-dir-symlink-loop", "train", _loop_arg("--sweep"), ("--sweep", "symlink loop")),
    Case("unknown-backbone", "train", _cfg(**{"train.model.name": "no_such_net"}),
         ("no_such_net", "timm")),
    Case("unknown-optimizer", "train", _cfg(**{"train.optim.name": "adamww"}),
         ("optim.name", "adamww")),
    # ---- train: train.csv
    Case("train-csv-missing", "train", _train_csv_missing, ("not found",)),
    Case("train-csv-zero-bytes", "train", _train_bytes(b""), ("empty",)),
    Case("train-csv-header-only", "train", _train_bytes(b"class_name,image_path,target\n"),
         ("no rows",)),
    Case("train-csv-missing-column", "train", _train_csv(lambda d: d.drop(columns="target")),
         ("missing column", "target")),
    Case("train-csv-latin1", "train", _train_bytes(LATIN1), ("utf-8",)),
    Case("train-csv-binary", "train", _train_bytes(BINARY), ("utf-8",)),
    Case("train-csv-ragged-row", "train",
         _train_bytes(b"class_name,image_path,target\na,train/x.JPEG,0,extra\n"), ("csv",)),
    Case("duplicate-row", "train", _train_csv(_duplicate_row), ("duplicate", "image_path")),
    Case("duplicate-path-two-classes", "train", _train_csv(_duplicate_path_other_class),
         ("duplicate", "image_path")),
    Case("target-not-integer", "train", _set_row("target", "1.5"), ("integer", "1.5")),
    Case("target-out-of-range", "train", _set_row("target", "7", row=11), ("out of range", "7")),
    Case("class-target-inconsistent", "train", _set_row("target", "1", row=0),
         ("maps to several",)),
    Case("blank-class-name", "train", _set_row("class_name", " "), ("empty", "class_name")),
    Case("class-fewer-than-folds", "train",
         _train_csv(lambda d: d.drop(index=[9, 10, 11]).reset_index(drop=True)),
         ("n_folds", "fewer")),
    Case("image-path-escapes-root", "train", _escape_root, ("outside", "../outside.JPEG")),
    Case("image-path-absolute", "train", _set_row("image_path", "/etc/hostname"),
         ("outside", "/etc/hostname")),
    Case("image-missing", "train", _missing_image, ("not found", "train/n00000000/2.JPEG")),
    Case("image-zero-bytes", "train", _zero_byte_image, ("0-byte", "train/n00000000/0.JPEG")),
    Case("image-random-bytes", "train", _image_bytes(RANDOM), ("decoded",)),
    Case("image-corrupt-jpeg", "train", _image_bytes(b"\xff\xd8\xff\xe0" + RANDOM), ("decoded",),
         subprocess=True),
    Case("image-huge-400mp", "train", _image_bytes(png_header(20000, 20000), ".png"),
         ("exceeds", "pixels")),
    Case("image-huge-64mp", "train", _image_bytes(png_header(8000, 8000), ".png"),
         ("8000x8000", "exceeds")),
    # ---- train: test.csv
    Case("test-csv-missing-column", "train", _test_bytes(b"path\ntest/0.JPEG\n"),
         ("missing column", "image_path")),
    Case("test-csv-zero-bytes", "train", _test_bytes(b""), ("empty",)),
    Case("test-image-missing", "train", _missing_test_image, ("not found", "test/3.JPEG")),
    Case("test-image-corrupt", "train", _corrupt_test_image, ("decoded",)),
    # ---- sweep
    Case("sweep-space-unknown-key", "sweep",
         _cfg(**{"search": {"enabled": True,
                            "space": {"optim.lrr": {"type": "uniform", "low": 0.1,
                                                    "high": 1.0}}}}),
         ("optim.lrr", "extra")),
    Case("sweep-space-low-ge-high", "sweep",
         _cfg(**{"search": {"enabled": True,
                            "space": {"optim.lr": {"type": "loguniform", "low": 0.1,
                                                   "high": 0.01}}}}),
         ("optim.lr", "low must be below high")),
    Case("sweep-space-unknown-backbone", "sweep",
         _cfg(**{"search": {"enabled": True,
                            "space": {"model.name": {"type": "choice",
                                                     "values": ["test_resnet", "resnet_9000"]}}}}),
         ("resnet_9000", "timm")),
    Case("sweep-unknown-backbone", "sweep", _cfg(**{"train.model.name": "no_such_net"}),
         ("no_such_net", "timm")),
    Case("sweep-space-unknown-optimizer", "sweep",
         _cfg(**{"search": {"enabled": True,
                            "space": {"optim.name": {"type": "choice",
                                                     "values": ["adamw", "sgdd"]}}}}),
         ("optim.name", "sgdd")),
    Case("sweep-candidate-bad-key", "sweep", _cfg(candidates=[{"optim.lr": 1e-3, "epochz": 2}]),
         ("candidates[0]", "epochz")),
    Case("sweep-corrupt-image", "sweep", _image_bytes(RANDOM), ("decoded",), subprocess=True),
    Case("sweep-set-bad-value", "sweep", _sets("search.num_samples=0"), ("num_samples",)),
    # a URI without its '//' would be a local folder named "gs:" beside the config
    Case("sweep-storage-uri-missing-slashes", "sweep", _sets("storage_path=gs:/bucket/sweeps"),
         ("storage_path", "gs://bucket/path")),
    Case("sweep-storage-unsupported-scheme", "sweep", _sets("storage_path=ftp://host/sweeps"),
         ("storage_path", "pyarrow.fs cannot open 'ftp'")),
    # Ray's own parser refused these only at ray.init, after pre-flight: exit 1
    Case("sweep-ray-address-without-port", "sweep", _sets("ray.address=localhost"),
         ("ray.address", "HOST:PORT", "'localhost'")),
    Case("sweep-ray-address-bad-port", "sweep", _sets("ray.address=10.0.0.5:abc"),
         ("ray.address", "HOST:PORT")),
    Case("sweep-ray-address-trailing-space", "sweep", _sets("ray.address='auto '"),
         ("ray.address", "'auto '")),
    Case("sweep-budget-bool", "sweep", _sets("search.select=ensemble", "search.budget=true"),
         ("search.budget", "integer")),
    # ---- ensemble_search.optimize
    Case("opt-missing-fold", "optimize", _opt_missing_fold, ("missing fold",), subprocess=True),
    Case("opt-nan-probs", "optimize", _opt_nan, ("nan",)),
    Case("opt-rows-not-summing-to-1", "optimize", _opt_not_normalised, ("sums to",)),
    Case("opt-class-count-one-fold", "optimize", _opt_class_count, ("classes",)),
    Case("opt-test-rows-differ", "optimize", _opt_test_rows, ("test rows",)),
    Case("opt-keys-not-train-rows", "optimize", _opt_keys_mismatch, ("no oof prediction",)),
    Case("opt-unknown-candidate", "optimize", _opt_unknown_candidate, ("not in the store",)),
    Case("opt-folds-csv-no-fold-column", "optimize", _folds_csv(lambda d: d.drop(columns="fold")),
         ("missing column", "fold")),
    Case("opt-folds-csv-duplicate-row", "optimize",
         _folds_csv(lambda d: pd.concat([d, d.iloc[[3]]])), ("appears twice",)),
    Case("opt-no-store", "optimize", _opt_no_store, ("no prediction store",)),
    Case("opt-set-bad-method", "optimize", _sets("ensemble.method=magic"), ("ensemble.method",)),
    Case("opt-fold-files-swapped", "optimize", _opt_fold_files_swapped,
         ("manifest says candidate_id",)),
    Case("opt-manifest-fold-edited", "optimize", _opt_manifest_fold_edited,
         ("manifest says fold=0",)),
    Case("opt-candidates-twice", "optimize", _opt_candidates_twice, ("twice",)),
    Case("opt-candidates-empty", "optimize", _opt_candidates_empty, ("names no candidate",)),
    Case("opt-out-symlink-loop", "optimize", _loop_arg("--out"), ("--out", "symlink loop")),
    Case("opt-storage-file-uri-with-host", "optimize",
         _sets("storage_path=file://relative/sweeps"), ("storage_path", "absolute local path")),
    Case("opt-sweep-uri-without-bucket", "optimize", _uri_arg("--sweep", "s3://"),
         ("--sweep", "not a storage URI")),
    Case("opt-manifest-num-classes", "optimize", _opt_manifest_num_classes,
         ("num_classes=7", "4 classes")),
    Case("opt-val-targets-text", "optimize", _opt_val_targets_text,
         ("val_targets", "not integer")),
    # ---- ensemble_search.predict
    Case("pred-unknown-candidate", "predict", _ensemble_json(_spec_unknown_candidate),
         ("gone000000", "not in the store"), subprocess=True),
    Case("pred-weights-not-summing-to-1", "predict", _ensemble_json(_spec_weights), ("sum",)),
    Case("pred-class-count", "predict", _ensemble_json(_spec_classes), ("classes",)),
    Case("pred-ensemble-not-json", "predict", _ensemble_json(text="{candidates: ["), ("json",)),
    Case("pred-test-csv-row-count", "predict", _pred_test_csv_extra_row, ("7 rows",)),
    Case("pred-test-csv-missing-column", "predict", _pred_test_csv_bytes(b"id\n1\n"),
         ("missing column", "image_path")),
    Case("pred-test-csv-zero-bytes", "predict", _pred_test_csv_bytes(b""), ("csv",)),
    Case("pred-nan-test-probs", "predict", _pred_nan_test, ("nan",)),
    Case("pred-missing-fold", "predict", _pred_missing_fold, ("missing fold",)),
    Case("pred-test-csv-duplicate-row", "predict", _pred_test_csv_duplicate(False),
         ("duplicate image_path", "test/")),
    Case("pred-test-csv-duplicate-respelt", "predict", _pred_test_csv_duplicate(True),
         ("duplicate image_path", "./test/")),
    Case("pred-test-csv-symlink-loop", "predict", _loop_arg("--test-csv"),
         ("--test-csv", "symlink loop")),
    Case("pred-images-symlink-loop", "predict", _loop_arg("--images"),
         ("--images", "symlink loop")),
    Case("pred-out-uri-missing-slashes", "predict", _uri_arg("--out", "gs:/bucket/out"),
         ("--out", "gs://bucket/path")),
    Case("pred-ensemble-uri-without-bucket", "predict", _uri_arg("--ensemble", "s3://"),
         ("--ensemble", "not a storage URI")),
    Case("pred-ensemble-format-2", "predict", _ensemble_json(lambda d: {**d, "format": 2}),
         ("format", "reads format 1, not 2")),
    Case("pred-test-csv-header-only", "predict", _pred_test_csv_bytes(b"image_path\n"),
         ("no rows",)),
    Case("pred-fold-beyond-n-folds", "predict", _pred_fold_beyond_n_folds,
         ("fold(s) [3] beyond",)),
]

# What a case may leave behind (fnmatch patterns), with the reason; all else must be untouched.
ALLOWED_WRITES: dict[str, set[str]] = {
    # The train images are all valid, so their decoded cache (12 images at 32 px) is built
    # before the test images are decoded and one fails. It is keyed by the images' paths,
    # sizes and mtimes, so the next run reuses it instead of decoding again, and no run can
    # mistake it for anything else; deleting it would only waste that work. Nothing else
    # (no folds file, no test cache) may appear.
    "test-image-corrupt": {"data/.cache", "data/.cache/images_12x32_*.npy"},
}


# ---------------------------------------------------------------- the harness


def snapshot(root: Path) -> dict[str, object]:
    """Every path under `root` -> 'dir' or (size, mtime_ns, sha1 of the content)."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():  # its target, not its content: a case may plant a symlink loop
            out[rel] = ("symlink", os.readlink(p))
        elif p.is_dir():
            out[rel] = "dir"
        else:
            st = p.lstat()
            out[rel] = (st.st_size, st.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def run_in_process(cli: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """`main(argv)`, with WARNING logs on stderr as the `--quiet` CLI prints them."""
    import importlib

    main = importlib.import_module(MODULES[cli]).main
    capsys.readouterr()
    handler = logging.StreamHandler(sys.stderr)  # capsys's stderr at this moment
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    finally:
        logging.getLogger().removeHandler(handler)
    out, err = capsys.readouterr()
    return rc, out, err


def run_subprocess(cli: str, argv: list[str], cwd: Path) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", MODULES[cli], *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.subprocess else [])
             for c in CASES])
def test_bad_input_fails_with_one_line_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    setup = case.setup(tmp_path)
    extra, bad_file = case.breaks(setup)
    monkeypatch.chdir(tmp_path)  # a stray relative write would land here and be caught
    before = snapshot(tmp_path)
    argv = [str(setup.config), *extra, "--quiet"]
    if case.subprocess:
        rc, out, err = run_subprocess(case.cli, argv, tmp_path)
    else:
        rc, out, err = run_in_process(case.cli, argv, capsys)

    assert "Traceback" not in out + err, err[-3000:]
    assert rc == 2, (rc, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    line = lines[0]
    for word in case.words:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    assert str(bad_file) in line or str(bad_file.resolve()) in line, \
        f"the offending file {bad_file} is not named in {line!r}"
    after = snapshot(tmp_path)
    allowed = ALLOWED_WRITES.get(case.id, set())
    changed = sorted(k for k in before.keys() | after.keys()
                     if before.get(k) != after.get(k)
                     and not any(fnmatch.fnmatchcase(k, pat) for pat in allowed))
    assert not changed, f"written or changed: {changed}"


@pytest.mark.parametrize("device", ["bogus", "cuda:0"])
def test_train_bad_device_fails_before_anything_is_written(device, tmp_path, capsys, monkeypatch):
    """--device is an argument, not a file: the line names the argument instead."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    setup = train_setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, out, err = run_in_process("train", [str(setup.config), "--device", device, "--quiet"],
                                  capsys)
    assert rc == 2 and "Traceback" not in out + err
    (line,) = err.strip().splitlines()
    assert f"--device {device!r}" in line
    assert snapshot(tmp_path) == before


def test_battery_covers_every_cli_with_enough_distinct_inputs():
    assert len({c.id for c in CASES}) == len(CASES) >= 25
    assert {c.cli for c in CASES} == set(MODULES)
    assert sum(c.subprocess for c in CASES) >= 3
