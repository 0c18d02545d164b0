"""Image decoding (any size, grey/RGB/RGBA, 8/16 bit, truncation checked) and the torch dataset."""

from __future__ import annotations

import contextlib
import io
import mmap
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from .errors import DataError

__all__ = ["MAX_PIXELS", "CachedImages", "SketchDataset", "open_cache", "opencv_quiet",
           "read_image", "resize_square"]

# A 50-megapixel sketch is a mistake (or a decompression bomb); refuse it before decoding.
MAX_PIXELS = 50_000_000



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
def opencv_quiet() -> Iterator[None]:
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
            return (open_cache, (self._cache_path,))
        return np.asarray(self).copy().__reduce__()


def open_cache(path: str | Path) -> CachedImages:
    arr = np.load(path, mmap_mode="r")
    out = CachedImages.__new__(CachedImages, path, dtype=arr.dtype, mode="r",
                               offset=arr.offset, shape=arr.shape)
    out._cache_path = str(path)
    return out


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
        # (N,) class indices, or (N, C) soft targets (pseudo-labels of stage pseudo)
        self.targets = None if targets is None else np.asarray(
            targets, dtype=np.int64 if np.ndim(targets) == 1 else np.float32)
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
        if self.targets is None:
            target = -1
        elif self.targets.ndim == 1:
            target = int(self.targets[i])
        else:
            target = torch.from_numpy(self.targets[i])
        return x, target

