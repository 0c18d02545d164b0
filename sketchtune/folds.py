"""Fold assignment: StratifiedKFold on `target`, written once as data and read by every trial."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from . import fs
from .errors import DataError
from .fs import Location
from .tables import check_class_sizes, normalise_image_path

__all__ = ["load_or_make_folds", "make_folds", "read_folds", "write_folds"]

_log = logging.getLogger(__name__)

COLUMNS = ["image_path", "target", "fold"]


def _keys(paths: pd.Series, source: str, hint: str = "") -> pd.Series:
    """image_path values normalised (one spelling per image), or DataError naming `source`.

    A file written before paths were normalised ('./train/x.JPEG') still matches its rows.
    """
    try:
        keys = paths.astype(str).map(normalise_image_path)
    except DataError as err:
        raise DataError(f"{source}: {err}{hint}") from None
    dup = keys[keys.duplicated()]
    if len(dup):
        raise DataError(f"{source}: image_path {dup.iloc[0]!r} appears twice (spelt "
                        f"{', '.join(map(repr, paths[keys == dup.iloc[0]]))}){hint}")
    return keys


def make_folds(df: pd.DataFrame, n_splits: int = 5, seed: int = 42, *,
               source: str | Path = "the train CSV") -> pd.DataFrame:
    """`df` (N rows: image_path, target) -> (N rows) image_path, target, fold int64, df order.

    `source` (the train CSV's path) starts the message when a class is too small to split.

    The reference pipeline's exact call, `StratifiedKFold(n_splits, shuffle=True,
    random_state=seed).split(df, df.target)`, so the same CSV in the same order gets the
    same fold for every row. image_path comes back normalised; two spellings of one image
    are refused (they would land in two folds: a train/validation leak).
    """
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2 but got {n_splits}")
    keys = _keys(df["image_path"], str(source))
    check_class_sizes(df, n_splits, source)
    fold = np.full(len(df), -1, dtype=np.int64)
    # Imported here: only the step that makes the folds needs scikit-learn. Every trial imports
    # this module to read them, and sklearn (with scipy) is ~1 s of each worker's start.
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(skf.split(df, df["target"])):
        fold[val_idx] = k
    assert (fold >= 0).all(), "every row belongs to exactly one validation fold"
    out = df[["image_path", "target"]].reset_index(drop=True).copy()
    out["image_path"] = keys.to_numpy()
    out["target"] = out["target"].astype(np.int64)
    out["fold"] = fold
    return out


def read_folds(folds_csv: Location) -> pd.DataFrame:
    """A folds file -> (N rows) image_path (normalised), target, fold int64, in file order;
    DataError naming the file when it is not one."""
    hint = "delete it to re-split"
    try:
        got = pd.read_csv(io.BytesIO(fs.read_bytes(folds_csv)), dtype={"image_path": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise DataError(f"{folds_csv}: not a readable folds CSV; {hint}") from None
    missing = [c for c in COLUMNS if c not in got.columns]
    if missing:
        found = ", ".join(map(str, got.columns))
        raise DataError(f"{folds_csv}: missing column {missing[0]!r} (found: {found}); {hint}")
    for col in ("target", "fold"):
        if not pd.api.types.is_integer_dtype(got[col]):
            raise DataError(f"{folds_csv}: column {col!r} is not all integers; {hint}")
    got = got[COLUMNS].copy()
    got["image_path"] = _keys(got["image_path"], str(folds_csv), f"; {hint}").to_numpy()
    return got


def write_folds(folds: pd.DataFrame, folds_csv: Location) -> None:
    """Write `make_folds`' output to `folds_csv` (a path or a URI) whole or not at all."""
    fs.write_bytes(fs.location(folds_csv), folds[COLUMNS].to_csv(index=False).encode())
    _log.info("wrote %d-fold split to %s", folds["fold"].max() + 1, folds_csv)


def load_or_make_folds(
    df: pd.DataFrame, folds_csv: Location, n_splits: int, seed: int, *, write: bool = True,
    source: str | Path = "the train CSV",
) -> pd.DataFrame:
    """The folds for `df` (image_path, target): read from `folds_csv`, or made and written once.

    Returns (N rows) image_path (normalised), target, fold in `df` order. An existing file
    must hold exactly df's images (compared by normalised image_path, so a file written with
    './x' matches 'x') with the same targets and folds 0..n_splits-1; otherwise
    DataError (a stale file would silently mix validation rows into training). With
    `write=False` a new split is only returned: the caller writes it (`write_folds`) once the
    rest of its input has been checked. `source` names the train CSV in messages.
    """
    folds_csv = fs.location(folds_csv)
    hint = "delete it to re-split"
    if not fs.is_file(folds_csv):
        folds = make_folds(df, n_splits, seed, source=source)
        if write:
            write_folds(folds, folds_csv)
        return folds
    got = read_folds(folds_csv)
    want = df[["image_path", "target"]].astype({"target": np.int64})
    want["image_path"] = _keys(want["image_path"], str(source)).to_numpy()
    merged = want.merge(got, on="image_path", how="outer", suffixes=("", "_file"),
                        indicator=True)
    only_csv = merged.loc[merged["_merge"] == "left_only", "image_path"]
    only_file = merged.loc[merged["_merge"] == "right_only", "image_path"]
    if len(only_csv) or len(only_file):
        raise DataError(
            f"{folds_csv}: does not match {source} ({len(only_csv)} train row(s) missing "
            f"from it, {len(only_file)} extra); {hint}"
        )
    diff = merged[merged["target"] != merged["target_file"]]
    if len(diff):
        raise DataError(
            f"{folds_csv}: target differs from {source} for {len(diff)} row(s) "
            f"(first: {diff['image_path'].iloc[0]!r}); {hint}"
        )
    present = sorted(got["fold"].unique().tolist())
    if present != list(range(n_splits)):
        raise DataError(
            f"{folds_csv}: has folds {present}, expected 0..{n_splits - 1} for n_splits="
            f"{n_splits}; {hint}"
        )
    check_class_sizes(df, n_splits, source)
    out = want.reset_index(drop=True).merge(got[["image_path", "fold"]], on="image_path",
                                            how="left", validate="1:1")
    return out[COLUMNS].astype({"fold": np.int64})
