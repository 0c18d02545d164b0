"""What refusing truncated JPEGs costs: read_image against the decode it replaced and PIL's check.

    python benchmarks/decode_check.py [--images 300] [--repeats 3]

Makes competition-like JPEGs (300-800 px, grey and colour, pen strokes on white; the same
generator as loader_speed.py) under benchmarks/_work/ (git-ignored), then times, one thread,
files in the OS cache, best of --repeats passes over all images:

* before: PIL header (size check) + cv2.imread, the read_image this change replaced;
* now: sketchtune.tables.read_image (read the bytes once, PIL header, the JPEG marker walk
  that finds truncation, cv2.imdecode) and, separately, the marker walk alone;
* PIL load: before + a full PIL decode with ImageFile.LOAD_TRUNCATED_IMAGES=False, the other
  way to detect truncation (it decodes every image twice).

It checks on the way that read_image gives the same pixels as before for every image.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.loader_speed import make_images  # noqa: E402
from sketchtune.images import _jpeg_complete, read_image  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "decode_check"


def before(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        w, h = im.size
    assert w * h <= 50_000_000
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def pil_load(path: Path) -> np.ndarray:
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(path) as im:
        im.load()  # raises OSError("image file is truncated") on a cut file
    return before(path)


def marker_walk(path: Path) -> bool:
    return _jpeg_complete(path.read_bytes())


def best_ms(fn: Callable[[Path], object], paths: list[Path], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(paths)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    paths = make_images(WORK, args.images)
    for p in paths:
        np.testing.assert_array_equal(read_image(p), before(p))
    mb = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{len(paths)} JPEGs ({mb:.1f} MB), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, one thread, best of {args.repeats}; same pixels as before")
    base = best_ms(before, paths, args.repeats)
    rows = [("before: PIL header + cv2.imread", base),
            ("now: read_image", best_ms(read_image, paths, args.repeats)),
            ("  of which the JPEG marker walk", best_ms(marker_walk, paths, args.repeats)),
            ("PIL full decode + before", best_ms(pil_load, paths, args.repeats))]
    print(f"{'':34s} {'ms/image':>9s} {'vs before':>9s}")
    for name, ms in rows:
        print(f"{name:34s} {ms:9.3f} {ms / base:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
