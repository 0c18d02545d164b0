"""Train/test CSV validation, image decoding, the decoded-image cache and the dataset."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import mmap
import os
import posixpath
import re
import stat
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
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
    "normalise_image_path",
    "read_cache_info",
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
# 2: truncated JPEGs are refused (a version-1 cache may hold their grey rows) and JPEG is
#    recognised by content, not by the file's suffix.
_CACHE_VERSION = 2


class DataError(ValueError):
    """A user error in the data (CSV or image files); the message is one line naming the file."""


def _first(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(str(x)) for x in items[:_SHOW])
    return f"{len(items)} (first: {shown})"


def _show(x: Any) -> str:
    """One value for a message: an int plainly, anything else quoted (a trailing space shows)."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    return repr(str(x))


# ---------------------------------------------------------------- CSVs


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


def _normalise(rel: str) -> tuple[str, str | None]:
    """(normalised path, None), or (rel, the key of its problem in _PATH_PROBLEMS)."""
    if "\0" in rel:
        return rel, "nul"
    if "\\" in rel:
        return rel, "backslash"
    norm = posixpath.normpath(rel)  # 'a/../b', './b', 'a//b', 'b/' -> one spelling each
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


def _read_csv(csv: Path, required: list[str]) -> pd.DataFrame:
    csv = Path(csv)
    if csv.is_dir():
        raise DataError(f"{csv}: is a folder, not a CSV file; fix the path in the config")
    if not csv.is_file():
        raise DataError(f"{csv}: file not found; fix the path in the config (demo data: "
                        "python -m sketchtune.demo)")
    try:
        text = csv.read_bytes()
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
    return df[required].reset_index(drop=True)


def _check_paths(csv: Path, df: pd.DataFrame, image_root: Path, check_images: bool) -> list[str]:
    """df's image_path column normalised (see normalise_image_path), or DataError naming `csv`.

    Messages quote the CSV's own spelling, so the user finds the row; duplicates are found
    among the normalised paths, and, with `check_images`, among the files they resolve to.
    """
    raw = df["image_path"].tolist()
    norm, bad = [], {}
    for rel in raw:
        n, problem = _normalise(rel)
        norm.append(n)
        if problem is not None:
            bad.setdefault(problem, []).append(rel)
    for problem, phrase in _PATH_PROBLEMS.items():
        if problem in bad:
            phrase = phrase.format(root=f" {image_root}")
            raise DataError(f"{csv}: image_path {phrase}: {_first(bad[problem])}")
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
        raise DataError(f"{csv}: images not found under {image_root}: {_first(missing)}; fix "
                        "image_path or the config's data.image_root")
    if dirs:
        raise DataError(f"{csv}: image_path names a folder, not an image file: {_first(dirs)}")
    if odd:
        raise DataError(f"{csv}: image_path names no regular file (a device or pipe): "
                        f"{_first(odd)}")
    if empty:
        raise DataError(f"{csv}: empty (0-byte) images under {image_root}: {_first(empty)}; "
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
    raise DataError(f"{csv}: {what}: {_first(dup.tolist())}; the first is on lines {lines}{as_}")


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
            f"{source}: class {_show(small.index[0])} has {small.iloc[0]} row(s), fewer than "
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
    df = _read_csv(csv, ["class_name", "image_path", "target"])
    raw = df["target"].str.strip()
    bad = raw[~raw.str.fullmatch(r"[+-]?\d+")].tolist()
    if bad:
        raise DataError(f"{csv}: target must be an integer; non-integer values: {_first(bad)}")
    ints = raw.map(int)  # Python ints: a 30-digit target is out of range, not an OverflowError
    n_classes = df["class_name"].nunique()
    if n_classes < 2:
        raise DataError(f"{csv}: only one class ({_show(df['class_name'].iloc[0])}); a "
                        "classifier needs at least 2")
    out = sorted(set(ints[(ints < 0) | (ints >= n_classes)]))
    if out:
        raise DataError(
            f"{csv}: target must be in [0, {n_classes}) for {n_classes} class names; "
            f"out of range: {_first(out)}"
        )
    df["target"] = ints.astype(np.int64)
    pairs = df[["class_name", "target"]].drop_duplicates()
    for a, b in (("class_name", "target"), ("target", "class_name")):
        many = pairs[pairs[a].duplicated(keep=False)]
        if len(many):
            key = many[a].iloc[0]
            got = sorted(many.loc[many[a] == key, b].tolist())
            raise DataError(f"{csv}: {a} {_show(key)} maps to several {b}s "
                            f"({', '.join(map(_show, got))})")
    # One-to-one and in range with C distinct names implies 0..C-1 all present (contiguous).
    check_class_sizes(df, min_per_class, csv)
    df["image_path"] = _check_paths(csv, df, image_root, check_images)
    return df


def read_test_csv(csv: Path, image_root: Path, *, check_images: bool = True) -> pd.DataFrame:
    """Read and validate test.csv -> (N rows) `image_path` str (normalised), in file order."""
    csv = Path(csv)
    df = _read_csv(csv, ["image_path"])
    df["image_path"] = _check_paths(csv, df, image_root, check_images)
    return df


# ---------------------------------------------------------------- images


# PIL's names for files that are JPEG underneath (MPO: a camera's multi-picture JPEG).
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
# An FF in entropy-coded JPEG data is followed by 00 (a stuffed byte), a restart marker
# D0-D7 or another FF (fill); anything else is the next marker.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _header(path: Path, buf: bytes) -> tuple[int, int, str]:
    """(width, height, PIL's format name) from the file's header, without decoding pixels.

    DataError when PIL does not know the format: its size then cannot be checked before
    OpenCV allocates the whole image (a 4 MB Radiance .hdr decodes to 8000x8000 floats).
    """
    try:
        with Image.open(io.BytesIO(buf)) as im:
            return im.size[0], im.size[1], im.format or ""
    except Image.DecompressionBombError as err:  # PIL's own guard: beyond our limit too
        raise DataError(f"{path}: image exceeds {MAX_PIXELS:,} pixels ({err})") from None
    except Exception:  # noqa: BLE001 - PIL raises many types for what it cannot identify
        raise DataError(f"{path}: cannot be decoded as an image (unknown or damaged format, or "
                        "one whose size cannot be read before decoding; use JPEG or PNG)") from None


def _jpeg_complete(buf: bytes) -> bool:
    """True if the JPEG's marker chain reaches its end-of-image marker (FF D9).

    A truncated JPEG does not: libjpeg then fills the missing rows grey and only prints
    "Premature end of JPEG file". Walking the segments (rather than searching the file's
    tail) is not fooled by an EXIF thumbnail's own markers or by data appended after the
    image (a phone's motion-photo video).
    """
    i, n = 2, len(buf)  # after SOI
    while i + 1 < n:
        if buf[i] != 0xFF:  # junk between segments: libjpeg skips to the next marker, so do we
            i = buf.find(b"\xff", i)
            if i < 0:
                return False
            continue
        marker = buf[i + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill, RSTn, TEM
            i += 1 if marker == 0xFF else 2
            continue
        if i + 4 > n:
            return False
        i += 2 + int.from_bytes(buf[i + 2:i + 4], "big")  # the segment, length included
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            m = _JPEG_MARKER.search(buf, i)
            if m is None:
                return False
            i = m.start()
    return False


def read_image(path: Path) -> np.ndarray:
    """Decode one image -> (H, W, 3) uint8 RGB. Grey is replicated, alpha composited on white.

    Raises DataError for an unreadable or undecodable file, a format whose size cannot be
    read from its header, an image above MAX_PIXELS (checked before decoding) and a
    truncated JPEG.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # reading a pipe would block forever
            raise DataError(f"{path}: not a regular file (a folder, device or pipe)")
        buf = path.read_bytes()  # read once: the header check and the decoder share it
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    w, h, fmt = _header(path, buf)
    if w * h > MAX_PIXELS:
        raise DataError(f"{path}: {w}x{h} image exceeds {MAX_PIXELS:,} pixels")
    jpeg = fmt in _JPEG_FORMATS
    if jpeg and not _jpeg_complete(buf):
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker; it would decode "
                        "partly grey)")
    # JPEG (recognised by content, whatever its suffix) with IMREAD_COLOR, as the reference
    # pipeline: EXIF orientation applied, grey -> 3 channels. Other formats may carry alpha or
    # 16 bits; read them as they are and convert below.
    flags = cv2.IMREAD_COLOR if jpeg else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), flags)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise DataError(f"{path}: cannot be decoded as an image")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        if img.dtype.kind == "f" and not np.isfinite(img).all():  # NaN would cast to garbage
            raise DataError(f"{path}: floating-point image with NaN or infinite pixels")
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        # Transparent background of a sketch means paper: composite onto white, not black.
        alpha = img[:, :, 3:].astype(np.float32) / 255.0
        rgb = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor(np.rint(rgb).astype(np.uint8), cv2.COLOR_BGR2RGB)
    if img.shape[2] != 3:  # cvtColor would raise a cv2.error, not a message naming the file
        raise DataError(f"{path}: {img.shape[2]}-channel image; expected grey, RGB or RGBA")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet_saved = 0


@contextlib.contextmanager
def _opencv_quiet() -> Iterator[None]:
    """OpenCV's own log lines off while images decode: each bad file is in our one message.

    Counted, so overlapping builders (threads) restore the user's level only when the last ends.
    """
    global _quiet_users, _quiet_saved
    with _quiet_lock:
        if _quiet_users == 0:
            _quiet_saved = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                cv2.utils.logging.setLogLevel(_quiet_saved)


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


CACHE_INFO_XATTR = "user.sketchtune.cache"  # what a cache holds, read by `sketchtune.cache list`


def read_cache_info(cache: Path) -> dict[str, Any] | None:
    """What a cache was made from (img_size, n_images, image_folder, built); None if unknown."""
    try:
        info = json.loads(os.getxattr(cache, CACHE_INFO_XATTR))
    except (OSError, ValueError, AttributeError):  # no xattr support, none set, not JSON
        return None
    return info if isinstance(info, dict) else None


def _write_cache_info(path: Path, paths: list[Path], img_size: int) -> None:
    # A file attribute, not a second file: the cache stays one file that appears whole
    # (it is set on the temporary file before the rename). Informative only: a file system
    # without user xattrs loses nothing but `sketchtune.cache list`'s folder column.
    try:
        folder = os.path.commonpath([str(p.parent) for p in paths])
    except ValueError:  # paths on different drives (Windows)
        folder = ""
    info = {"img_size": img_size, "n_images": len(paths), "image_folder": folder,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with contextlib.suppress(OSError, AttributeError):
        os.setxattr(path, CACHE_INFO_XATTR, json.dumps(info).encode())


def _mark_used(final: Path) -> None:
    # The access time says when a cache was last used (`sketchtune.cache remove --older-than`);
    # relatime mounts update it at most daily, so set it on each hit. mtime stays the build's.
    with contextlib.suppress(OSError):  # a read-only cache folder is fine
        os.utime(final, ns=(time.time_ns(), final.stat().st_mtime_ns))  # mtime exact


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
                _mark_used(final)
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

        # cv2 releases the GIL while decoding and resizing, so threads scale across cores:
        # one per core this process may use (a 16-core GPU box decodes on 16, not 8).
        n = workers or len(os.sched_getaffinity(0)) or 1
        with _opencv_quiet(), ThreadPoolExecutor(n) as pool:
            it = pool.map(work, range(len(paths)))
            for _ in tqdm(it, total=len(paths), desc=f"decoding {img_size}px", unit="img",
                          disable=not progress, leave=False):
                pass
        if bad:
            raise DataError(f"images that cannot be used: {_first(sorted(bad))}; replace or "
                            "drop them")
        out.flush()
        _write_cache_info(tmp, paths, img_size)
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
