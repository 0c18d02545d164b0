"""Train/test CSV validation, image decoding, the decoded-image cache and the dataset."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from .errors import first_line

__all__ = [
    "CachedImages",
    "DataError",
    "SketchDataset",
    "check_class_sizes",
    "load_images",
    "read_image",
    "read_test_csv",
    "read_train_csv",
    "resize_square",
    "resolve_image_path",
]

_log = logging.getLogger(__name__)

# A 50-megapixel sketch is a mistake (or a decompression bomb); refuse it before decoding.
MAX_PIXELS = 50_000_000
_SHOW = 3  # how many offending rows a message lists
# Bump when decoding or resizing changes, so old caches are not reused.
_CACHE_VERSION = 1


class DataError(ValueError):
    """A user error in the data (CSV or image files); the message is one line naming the file."""


def _first(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(str(x)) for x in items[:_SHOW])
    return f"{len(items)} (first: {shown})"


# ---------------------------------------------------------------- CSVs


def resolve_image_path(image_root: Path, rel: str) -> Path:
    """`image_root / rel`, resolved (symlinks followed); DataError if it lands outside the root."""
    root = Path(image_root).resolve()
    if not rel or Path(rel).is_absolute() or Path(rel).drive:
        raise DataError(f"image path {rel!r} must be relative to the image root {root}")
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise DataError(f"image path {rel!r} escapes the image root {root}")
    return path


def _read_csv(csv: Path, required: list[str]) -> pd.DataFrame:
    csv = Path(csv)
    if not csv.is_file():
        raise DataError(f"{csv}: file not found; fix the path in the config (demo data: "
                        "python -m sketchtune.demo)")
    try:
        # utf-8-sig: spreadsheets save a byte-order mark that would glue onto the first column.
        # index_col=False + the warning as an error: a row with extra fields is refused rather
        # than silently turned into an index or truncated.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(csv, encoding="utf-8-sig", dtype=str, keep_default_na=False,
                             index_col=False)
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
        raise DataError(f"{csv}: missing column {missing[0]!r} (found: {', '.join(df.columns)})")
    if len(df) == 0:
        raise DataError(f"{csv}: no rows")
    for col in required:
        blank = df.index[df[col].str.strip() == ""]
        if len(blank):
            raise DataError(
                f"{csv}: empty {col!r} in {len(blank)} row(s) (first: line {blank[0] + 2})"
            )
    return df[required].reset_index(drop=True)


def _check_paths(csv: Path, df: pd.DataFrame, image_root: Path, check_images: bool) -> None:
    dup = df.loc[df["image_path"].duplicated(), "image_path"].tolist()
    if dup:
        raise DataError(f"{csv}: duplicate image_path: {_first(dup)}")
    escaped, resolved = [], []
    for rel in df["image_path"]:
        try:
            resolved.append(resolve_image_path(image_root, rel))
        except DataError:
            escaped.append(rel)
    if escaped:
        raise DataError(f"{csv}: image_path outside the image root {image_root}: {_first(escaped)}")
    if not check_images:
        return
    # The cheap check on every file; decoding happens (once) when the cache is built.
    missing, empty = [], []
    for rel, path in zip(df["image_path"], resolved, strict=True):
        try:
            st = path.stat()
        except OSError:
            missing.append(rel)
            continue
        if not path.is_file():
            missing.append(rel)
        elif st.st_size == 0:
            empty.append(rel)
    if missing:
        raise DataError(f"{csv}: images not found under {image_root}: {_first(missing)}; fix "
                        "image_path or the config's data.image_root")
    if empty:
        raise DataError(f"{csv}: empty (0-byte) images under {image_root}: {_first(empty)}; "
                        "copy them again or drop their rows")


def check_class_sizes(df: pd.DataFrame, n_folds: int, source: str | Path) -> None:
    """DataError naming `source` unless every class of `df` has at least `n_folds` rows.

    A stratified split puts each class in every validation fold, so a smaller class cannot be
    split. Classes are `class_name` values, or `target` values when there is no name column.
    """
    key = "class_name" if "class_name" in df.columns else "target"
    counts = df[key].value_counts()
    small = counts[counts < n_folds]
    if len(small):
        name = small.index[0]
        name = name.item() if hasattr(name, "item") else name  # 1, not np.int64(1)
        raise DataError(
            f"{source}: class {name!r} has {small.iloc[0]} row(s), fewer than "
            f"{n_folds} ({len(small)} such class(es)); every fold needs each class: "
            "lower data.n_folds or add rows"
        )


def read_train_csv(
    csv: Path, image_root: Path, *, check_images: bool = True, min_per_class: int = 1
) -> pd.DataFrame:
    """Read and validate train.csv -> (N rows) `class_name` str, `image_path` str, `target` int64.

    Targets must be the integers 0..C-1 (C = number of distinct class names), one per class.
    """
    csv = Path(csv)
    df = _read_csv(csv, ["class_name", "image_path", "target"])
    raw = df["target"].str.strip()
    bad = raw[~raw.str.fullmatch(r"[+-]?\d+")].tolist()
    if bad:
        raise DataError(f"{csv}: target must be an integer; non-integer values: {_first(bad)}")
    df["target"] = raw.astype(np.int64)
    n_classes = df["class_name"].nunique()
    out = df.loc[(df["target"] < 0) | (df["target"] >= n_classes), "target"].unique().tolist()
    if out:
        raise DataError(
            f"{csv}: target must be in [0, {n_classes}) for {n_classes} class names; "
            f"out of range: {_first(sorted(out))}"
        )
    pairs = df[["class_name", "target"]].drop_duplicates()
    for a, b in (("class_name", "target"), ("target", "class_name")):
        many = pairs[pairs[a].duplicated(keep=False)]
        if len(many):
            key = many[a].iloc[0]
            got = sorted(map(str, many.loc[many[a] == key, b]))
            raise DataError(f"{csv}: {a} {key!r} maps to several {b}s ({', '.join(got)})")
    # One-to-one and in range with C distinct names implies 0..C-1 all present (contiguous).
    check_class_sizes(df, min_per_class, csv)
    _check_paths(csv, df, image_root, check_images)
    return df


def read_test_csv(csv: Path, image_root: Path, *, check_images: bool = True) -> pd.DataFrame:
    """Read and validate test.csv -> (N rows) `image_path` str, in file order."""
    csv = Path(csv)
    df = _read_csv(csv, ["image_path"])
    _check_paths(csv, df, image_root, check_images)
    return df


# ---------------------------------------------------------------- images


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels; None if PIL can't tell.

    DataError when the header claims more pixels than PIL's own bomb guard allows.
    """
    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError as err:  # PIL's own guard: beyond our limit too
        raise DataError(f"{path}: image exceeds {MAX_PIXELS:,} pixels ({err})") from None
    except Exception:  # noqa: BLE001 - unknown to PIL; cv2 may still decode it
        return None


def read_image(path: Path) -> np.ndarray:
    """Decode one image -> (H, W, 3) uint8 RGB. Grey is replicated, alpha composited on white.

    Raises DataError for an undecodable file or one above MAX_PIXELS.
    """
    path = Path(path)
    size = _header_size(path)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise DataError(f"{path}: {size[0]}x{size[1]} image exceeds {MAX_PIXELS:,} pixels")
    if size is None and path.suffix.lower() in (".jpg", ".jpeg"):
        # PIL reads every valid JPEG header; handing a broken one to cv2 only adds libjpeg's
        # own complaint ("Premature end of JPEG file") to the user's terminal.
        raise DataError(f"{path}: cannot be decoded as an image (no valid JPEG header)")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        # IMREAD_COLOR, as the reference pipeline: applies EXIF orientation, grey -> 3 channels.
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    else:
        # Other formats may carry alpha or 16 bits; read them as they are and convert below.
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise DataError(f"{path}: cannot be decoded as an image")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        # Transparent background of a sketch means paper: composite onto white, not black.
        alpha = img[:, :, 3:].astype(np.float32) / 255.0
        rgb = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor(np.rint(rgb).astype(np.uint8), cv2.COLOR_BGR2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_square(img: np.ndarray, img_size: int) -> np.ndarray:
    """(H, W, 3) -> (img_size, img_size, 3), aspect not kept, as the reference pipeline did."""
    if img.shape[:2] == (img_size, img_size):
        return img
    return cv2.resize(img, (img_size, img_size), interpolation=cv2.INTER_AREA)


class CachedImages(np.memmap):
    """A read-only memory-mapped (N, S, S, 3) uint8 cache that pickles by path, not by data.

    DataLoader workers started by spawn/forkserver unpickle the dataset; a plain np.memmap
    would copy the whole array into each of them. Slices and views pickle as plain copies.
    """

    _cache_path: str | None = None

    def __array_finalize__(self, obj: Any) -> None:
        super().__array_finalize__(obj)
        self._cache_path = None  # a view is not the whole file

    def __reduce__(self) -> Any:
        if self._cache_path is not None and isinstance(self.base, mmap.mmap):
            return (_open_cache, (self._cache_path,))
        return np.asarray(self).copy().__reduce__()


def _open_cache(path: str | Path) -> CachedImages:
    arr = np.load(path, mmap_mode="r")
    out = CachedImages.__new__(CachedImages, path, dtype=arr.dtype, mode="r",
                               offset=arr.offset, shape=arr.shape)
    out._cache_path = str(path)
    return out


def _cache_key(paths: list[Path], img_size: int) -> str:
    h = hashlib.sha1()
    h.update(json.dumps({"v": _CACHE_VERSION, "size": img_size}).encode())
    missing = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            missing.append(p)
            continue
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if missing:
        raise DataError(f"images not found: {_first(missing)}")
    return h.hexdigest()[:16]


def load_images(
    paths: list[Path], img_size: int, cache_dir: Path, *, progress: bool = True,
    workers: int | None = None,
) -> np.ndarray:
    """Decoded, square-resized images -> (N, img_size, img_size, 3) uint8 RGB, memory-mapped.

    The cache file under `cache_dir` is keyed by the resolved paths, their sizes and
    mtimes, and img_size: every epoch and every trial on the machine reuses it, and a
    changed image makes a new one. It is written to a per-process temporary name and
    renamed, so concurrent builders never see each other's half-written file. A file that
    cannot be decoded raises DataError listing the first few and the count.
    """
    if not paths:
        return np.zeros((0, img_size, img_size, 3), np.uint8)
    paths = [Path(p).resolve() for p in paths]
    cache_dir = Path(cache_dir)
    final = cache_dir / f"images_{len(paths)}x{img_size}_{_cache_key(paths, img_size)}.npy"
    if final.is_file():
        try:
            arr = _open_cache(final)
            if arr.shape == (len(paths), img_size, img_size, 3) and arr.dtype == np.uint8:
                _log.debug("image cache hit: %s", final)
                return arr
        except (OSError, ValueError):
            pass
        _log.warning("image cache %s is unreadable; rebuilding it", final)
    made_dir = not cache_dir.is_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    bad: list[str] = []
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(paths), img_size, img_size, 3))

        def work(i: int) -> None:
            try:
                out[i] = resize_square(read_image(paths[i]), img_size)
            except DataError as err:
                bad.append(f"{paths[i]} ({str(err).removeprefix(f'{paths[i]}: ')})")
            except cv2.error:
                bad.append(f"{paths[i]} (cannot be decoded as an image)")

        # cv2 releases the GIL while decoding and resizing, so threads scale across cores.
        n = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(n) as pool:
            it = pool.map(work, range(len(paths)))
            for _ in tqdm(it, total=len(paths), desc=f"decoding {img_size}px", unit="img",
                          disable=not progress, leave=False):
                pass
        if bad:
            raise DataError(f"images that cannot be used: {_first(sorted(bad))}; replace or "
                            "drop them")
        out.flush()
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        if made_dir and not final.is_file():
            with contextlib.suppress(OSError):  # a failed first build leaves no empty folder
                cache_dir.rmdir()  # (only if empty: a concurrent builder may be using it)
    _log.info("image cache built: %s (%.1f MB)", final, final.stat().st_size / 1e6)
    return _open_cache(final)


# ---------------------------------------------------------------- dataset


class SketchDataset(torch.utils.data.Dataset):
    """(image (3, H, W) float32, target int) pairs from decoded images; target -1 if unlabelled.

    `images` is anything indexable returning (H, W, 3) uint8 RGB: a CachedImages array (pickles
    by path, so DataLoader workers map the same file instead of copying it) or a row view of one.
    `transform` is an albumentations pipeline ending in ToTensorV2; None gives [0, 1] floats.
    """

    def __init__(
        self, images: Any, targets: np.ndarray | None = None,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # A writable copy: the cache is read-only and some augmentations work in place.
        img = np.array(self.images[i], dtype=np.uint8, copy=True)
        assert img.ndim == 3 and img.shape[2] == 3, f"expected (H, W, 3), got {img.shape}"
        if self.transform is not None:
            x = self.transform(image=img)["image"]
        else:
            x = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
        target = -1 if self.targets is None else int(self.targets[i])
        return x, target
