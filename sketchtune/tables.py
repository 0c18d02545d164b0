"""Train/test CSVs and image paths, checked: torch-free, so the ensemble search reads them too."""

from __future__ import annotations

import io
import posixpath
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import fs
from .errors import DataError, first_line, show

__all__ = ["check_class_sizes", "first_of", "normalise_image_path", "read_csv", "read_test_csv",
           "read_train_csv", "resolve_image_path"]

_SHOW = 3  # how many offending rows a message lists


def first_of(items: Sequence[Any]) -> str:
    """`N (first: 'a', 'b', 'c')`: how many offend, and the first few, for a message."""
    shown = ", ".join(repr(str(x)) for x in items[:_SHOW])
    return f"{len(items)} (first: {shown})"




# What can be wrong with a CSV's image_path, in the order they are reported. Confinement is
# checked on the normalised text, not on the resolved file: a symlink inside the root (a
# dataset folder on another disk) is the user's own choice and is followed.
_PATH_PROBLEMS = {
    "nul": "with a NUL character",
    # On Linux a backslash is part of a file name, not a separator: guessing either way could
    # read another file than the CSV's author meant, so a Windows-made CSV is refused.
    "backslash": "with '\\' (write paths with '/')",
    "outside": "outside the image root{root} (absolute, or leading '..')",
    "root": "that names no file ('.' or 'a/..')",
}


def _normalise(rel: str, roots: Sequence[str] = ()) -> tuple[str, str | None]:
    """(normalised path, None), or (rel, the key of its problem in _PATH_PROBLEMS).

    An absolute path inside one of `roots` (the image root as written and as resolved) is
    taken relative to it: the key of an image does not depend on how the CSV spelt it.
    """
    if "\0" in rel:
        return rel, "nul"
    if "\\" in rel:
        return rel, "backslash"
    norm = posixpath.normpath(rel)  # 'a/../b', './b', 'a//b', 'b/' -> one spelling each
    inside = next((r for r in roots if norm.startswith(r.rstrip("/") + "/")), None)
    if posixpath.isabs(norm) and inside is not None:
        norm = norm[len(inside.rstrip("/")) + 1:]
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        return rel, "outside"
    if norm == ".":
        return rel, "root"
    return norm, None


def normalise_image_path(rel: str) -> str:
    """The one spelling of an image_path that rows, folds and the store are keyed by.

    `posixpath.normpath` of the CSV entry ('./a//b/../c.jpg' -> 'a/c.jpg'), so one image
    cannot appear under two spellings in two folds. Lexical: 'link/..' means the root even
    when 'link' is a symlink. DataError for an absolute path, one that leaves the root with
    '..', one with a backslash or a NUL character, and one that names the root itself.
    """
    norm, problem = _normalise(rel)
    if problem is not None:
        raise DataError(f"image_path {rel!r} " + _PATH_PROBLEMS[problem].format(root=""))
    return norm


def resolve_image_path(image_root: Path, rel: str) -> Path:
    """`image_root / normalise_image_path(rel)` with symlinks followed (they may leave the root).

    DataError if `rel` itself is absolute or climbs out of the root (see normalise_image_path).
    """
    norm = normalise_image_path(rel)
    path = Path(image_root).resolve() / norm
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return path  # unresolved: the caller's stat() fails and names it as not found


def read_csv(csv: fs.Location, required: Sequence[str]) -> pd.DataFrame:
    """The `required` columns of a CSV (a path or a URI) as text, in file order; DataError
    naming `csv` for a missing file, a file that is not UTF-8 CSV, a missing column, no rows
    or an empty cell."""
    if fs.is_dir(csv):
        raise DataError(f"{csv}: is a folder, not a CSV file; fix the path in the config")
    try:
        text = fs.read_bytes(csv)
    except FileNotFoundError:
        raise DataError(f"{csv}: file not found; fix the path in the config (demo data: "
                        "python -m sketchtune.demo)") from None
    except OSError as err:
        raise DataError(f"{csv}: cannot be read ({err.strerror or err})") from None
    if b"\0" in text:  # UTF-16 (a spreadsheet's "Unicode text") or not text at all
        raise DataError(f"{csv}: not UTF-8 text (NUL bytes: UTF-16 or binary?); save it as "
                        "a UTF-8 CSV")
    try:
        # utf-8-sig: spreadsheets save a byte-order mark that would glue onto the first column.
        # index_col=False + the warning as an error: a row with extra fields is refused rather
        # than silently turned into an index or truncated.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(io.BytesIO(text), encoding="utf-8-sig", dtype=str,
                             keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv}: empty file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{csv}: not UTF-8 text (byte {err.start}); is it really a CSV?") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning) as err:
        first = first_line(err)
        raise DataError(f"{csv}: not a valid CSV ({first})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        sep = next((c for c in ";\t|" if len(df.columns) == 1 and c in df.columns[0]), None)
        hint = f"; it looks {sep!r}-separated: save it with ','" if sep else ""
        # A quoted header cell may hold a line break: shown escaped, the message stays one line.
        found = ", ".join(c if c.isprintable() else repr(c) for c in df.columns)
        raise DataError(f"{csv}: missing column {missing[0]!r} (found: {found}){hint}")
    if len(df) == 0:
        raise DataError(f"{csv}: no rows")
    for col in required:
        blank = df.index[df[col].str.strip() == ""]
        if len(blank):
            raise DataError(
                f"{csv}: empty {col!r} in {len(blank)} row(s) (first: line {blank[0] + 2})"
            )
    return df[list(required)].reset_index(drop=True)


def _check_paths(csv: Path, df: pd.DataFrame, image_root: Path, check_images: bool) -> list[str]:
    """df's image_path column normalised (see normalise_image_path), or DataError naming `csv`.

    Messages quote the CSV's own spelling, so the user finds the row; duplicates are found
    among the normalised paths, and, with `check_images`, among the files they resolve to.
    """
    raw = df["image_path"].tolist()
    norm, bad = [], {}
    roots = [posixpath.normpath(str(image_root)), str(Path(image_root).resolve())]
    for rel in raw:
        n, problem = _normalise(rel, roots)
        norm.append(n)
        if problem is not None:
            bad.setdefault(problem, []).append(rel)
    for problem, phrase in _PATH_PROBLEMS.items():
        if problem in bad:
            phrase = phrase.format(root=f" {image_root}")
            raise DataError(f"{csv}: image_path {phrase}: {first_of(bad[problem])}")
    _check_unique(csv, raw, norm, "duplicate image_path")
    if not check_images:
        return norm
    # The cheap check on every file; decoding happens (once) when the cache is built.
    root = Path(image_root).resolve()
    resolved = [resolve_image_path(root, n) for n in norm]
    missing, dirs, odd, empty = [], [], [], []
    for rel, path in zip(raw, resolved, strict=True):
        try:
            st = path.stat()
        except OSError:
            missing.append(rel)
            continue
        if stat.S_ISDIR(st.st_mode):
            dirs.append(rel)
        elif not stat.S_ISREG(st.st_mode):
            odd.append(rel)
        elif st.st_size == 0:
            empty.append(rel)
    if missing:
        raise DataError(f"{csv}: images not found under {image_root}: {first_of(missing)}; fix "
                        "image_path or the config's data.image_root")
    if dirs:
        raise DataError(f"{csv}: image_path names a folder, not an image file: {first_of(dirs)}")
    if odd:
        raise DataError(f"{csv}: image_path names no regular file (a device or pipe): "
                        f"{first_of(odd)}")
    if empty:
        raise DataError(f"{csv}: empty (0-byte) images under {image_root}: {first_of(empty)}; "
                        "copy them again or drop their rows")
    # Two entries that are one file through a symlink are one image in two folds, too.
    _check_unique(csv, raw, [str(p) for p in resolved], "image_path entries that are one file "
                  "through a symlink")
    return norm


def _check_unique(csv: Path, raw: list[str], keys: list[str], what: str) -> None:
    """DataError if two rows share a key: names the first key, its lines and spellings."""
    s = pd.Series(keys)
    dup = s[s.duplicated()]
    if not len(dup):
        return
    rows = np.flatnonzero((s == dup.iloc[0]).to_numpy())
    lines = ", ".join(str(i + 2) for i in rows)  # line 1 is the header
    spelt = list(dict.fromkeys(raw[i] for i in rows))
    as_ = f" as {', '.join(map(repr, spelt))}" if len(spelt) > 1 else ""
    raise DataError(f"{csv}: {what}: {first_of(dup.tolist())}; the first is on lines {lines}{as_}")


def check_class_sizes(df: pd.DataFrame, n_folds: int, source: str | Path) -> None:
    """DataError naming `source` unless every class of `df` has at least `n_folds` rows.

    A stratified split puts each class in every validation fold, so a smaller class cannot be
    split. Classes are `class_name` values, or `target` values when there is no name column.
    """
    key = "class_name" if "class_name" in df.columns else "target"
    counts = df[key].value_counts()
    small = counts[counts < n_folds]
    if len(small):
        raise DataError(
            f"{source}: class {show(small.index[0])} has {small.iloc[0]} row(s), fewer than "
            f"{n_folds} ({len(small)} such class(es)); every fold needs each class: "
            "lower data.n_folds or add rows"
        )


def read_train_csv(
    csv: Path, image_root: Path, *, check_images: bool = True, min_per_class: int = 1
) -> pd.DataFrame:
    """Read and validate train.csv -> (N rows) `class_name` str, `image_path` str, `target` int64.

    Targets must be the integers 0..C-1 (C >= 2 distinct class names), one per class.
    `image_path` comes back normalised (normalise_image_path): the key of folds and the store.
    """
    csv = Path(csv)
    df = read_csv(csv, ["class_name", "image_path", "target"])
    raw = df["target"].str.strip()
    bad = raw[~raw.str.fullmatch(r"[+-]?\d+")].tolist()
    if bad:
        raise DataError(f"{csv}: target must be an integer; non-integer values: {first_of(bad)}")
    ints = raw.map(int)  # Python ints: a 30-digit target is out of range, not an OverflowError
    n_classes = df["class_name"].nunique()
    if n_classes < 2:
        raise DataError(f"{csv}: only one class ({show(df['class_name'].iloc[0])}); a "
                        "classifier needs at least 2")
    out = sorted(set(ints[(ints < 0) | (ints >= n_classes)]))
    if out:
        raise DataError(
            f"{csv}: target must be in [0, {n_classes}) for {n_classes} class names; "
            f"out of range: {first_of(out)}"
        )
    df["target"] = ints.astype(np.int64)
    pairs = df[["class_name", "target"]].drop_duplicates()
    for a, b in (("class_name", "target"), ("target", "class_name")):
        many = pairs[pairs[a].duplicated(keep=False)]
        if len(many):
            key = many[a].iloc[0]
            got = sorted(many.loc[many[a] == key, b].tolist())
            raise DataError(f"{csv}: {a} {show(key)} maps to several {b}s "
                            f"({', '.join(map(show, got))})")
    # One-to-one and in range with C distinct names implies 0..C-1 all present (contiguous).
    check_class_sizes(df, min_per_class, csv)
    df["image_path"] = _check_paths(csv, df, image_root, check_images)
    return df


def read_test_csv(csv: Path, image_root: Path, *, check_images: bool = True) -> pd.DataFrame:
    """Read and validate test.csv -> (N rows) `image_path` str (normalised), in file order."""
    csv = Path(csv)
    df = read_csv(csv, ["image_path"])
    df["image_path"] = _check_paths(csv, df, image_root, check_images)
    return df

