"""Demo data in the competition's layout, from scikit-learn's bundled handwritten digits.

`python -m sketchtune.demo [--out data/demo] [--seed 0] [--classes 10] [--per-class 60]
[--test-per-class 20] [--size 64]` writes::

    <out>/train/<class_name>/img_0000.JPEG   train.csv        class_name,image_path,target
    <out>/test/0000.JPEG                     test.csv         image_path
    <out>/demo.json (the stamp)              test_labels.csv  image_path,target

The digits are real pen strokes (8x8, 1797 images), drawn dark on white, upscaled
smoothly and jittered by a small random affine so that reused digits differ. Every
third file is a 3-channel colour JPEG (blue ink on cream paper), the rest grayscale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

__all__ = ["DemoError", "main", "make_demo"]

_VERSION = 1  # bump when the rendering changes, so an old folder is not taken as current
_JPEG_QUALITY = 90


class DemoError(ValueError):
    """A user error (bad argument, a folder in the way); one line."""


def _render(digit: np.ndarray, size: int, rng: np.random.Generator, colour: bool) -> np.ndarray:
    """(8, 8) ink 0..16 -> (size, size) uint8 grey or (size, size, 3) uint8 BGR sketch."""
    ink = np.pad(digit.astype(np.float32) / 16.0, 1)  # a margin so strokes do not touch edges
    big = cv2.resize(ink, (size, size), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(0.85, 1.1)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.06, 0.06, 2) * size
    big = cv2.warpAffine(big, m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    # A steeper ink curve turns the soft blobs into pen-like strokes.
    ink = np.clip(big * rng.uniform(1.3, 1.8), 0.0, 1.0)
    if not colour:
        return np.rint(255.0 * (1.0 - ink)).astype(np.uint8)
    paper = np.array([235.0, 245.0, 250.0])  # BGR cream
    pen = np.array([150.0, 40.0, 20.0])  # BGR dark blue
    img = paper * (1.0 - ink[..., None]) + pen * ink[..., None]
    return np.rint(img).astype(np.uint8)


def _write_jpeg(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".JPEG", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    assert ok, f"JPEG encoding failed for {path}"
    path.write_bytes(buf.tobytes())


def _build(folder: Path, stamp: dict) -> tuple[int, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(stamp["seed"])
    classes = [f"n{c:08d}" for c in range(stamp["classes"])]
    n_train, n_test, size = stamp["per_class"], stamp["test_per_class"], stamp["size"]
    train_rows, test_rows = [], []
    for target, name in enumerate(classes):
        pool = np.flatnonzero(digits.target == target)
        # Distinct digits while they last, then reuse (the affine jitter makes copies differ).
        order = rng.permutation(pool)
        idx = np.resize(order, n_train + n_test)
        (folder / "train" / name).mkdir(parents=True)
        for j, k in enumerate(idx):
            rows = train_rows if j < n_train else test_rows
            rows.append((name, target, digits.images[k], j))
    (folder / "test").mkdir(parents=True)
    count = 0
    for name, target, digit, j in train_rows:
        rel = f"train/{name}/img_{j:04d}.JPEG"
        _write_jpeg(folder / rel, _render(digit, size, rng, colour=count % 3 == 2))
        train_rows[count] = (name, rel, target)
        count += 1
    # Test files are shuffled so their names say nothing about the class.
    perm = rng.permutation(len(test_rows))
    test_out = []
    for i, t in enumerate(perm):
        name, target, digit, _ = test_rows[t]
        rel = f"test/{i:04d}.JPEG"
        _write_jpeg(folder / rel, _render(digit, size, rng, colour=i % 3 == 2))
        test_out.append((rel, target))
    pd.DataFrame(train_rows, columns=["class_name", "image_path", "target"]).to_csv(
        folder / "train.csv", index=False)
    test_df = pd.DataFrame(test_out, columns=["image_path", "target"])
    test_df[["image_path"]].to_csv(folder / "test.csv", index=False)
    test_df.to_csv(folder / "test_labels.csv", index=False)
    (folder / "demo.json").write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return len(train_rows), len(test_out)


def _read_stamp(out: Path) -> dict | None:
    try:
        return json.loads((out / "demo.json").read_text())
    except (OSError, ValueError):
        return None


def make_demo(out: Path, *, seed: int = 0, classes: int = 10, per_class: int = 60,
              test_per_class: int = 20, size: int = 64) -> bool:
    """Write the demo data set to `out`; False if it is already there with the same stamp.

    Built in a temporary sibling folder and renamed into place, so an interrupted run
    leaves no half-made data set.
    """
    if not 2 <= classes <= 10:
        raise DemoError(f"--classes must be in [2, 10] (ten digits) but got {classes}")
    if per_class < 1 or test_per_class < 0:
        raise DemoError(f"--per-class must be >= 1 and --test-per-class >= 0 but got "
                        f"{per_class}, {test_per_class}")
    if not 16 <= size <= 1024:
        raise DemoError(f"--size must be in [16, 1024] but got {size}")
    out = Path(out)
    stamp = {"version": _VERSION, "seed": seed, "classes": classes, "per_class": per_class,
             "test_per_class": test_per_class, "size": size}
    if out.exists():
        old = _read_stamp(out)
        if old == stamp:
            return False
        what = "a different demo" if old else "something that is not this demo"
        raise DemoError(f"{out}: already holds {what}; delete it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        _build(tmp, stamp)
        try:
            os.rename(tmp, out)
        except OSError:
            # Another process finished the same demo first: theirs is as good as ours.
            if _read_stamp(out) != stamp:
                raise
            return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sketchtune.demo",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/demo"), help="folder to create")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=10, help="number of digit classes (2-10)")
    ap.add_argument("--per-class", type=int, default=60, help="train images per class")
    ap.add_argument("--test-per-class", type=int, default=20, help="test images per class")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        made = make_demo(args.out, seed=args.seed, classes=args.classes,
                         per_class=args.per_class, test_per_class=args.test_per_class,
                         size=args.size)
    except DemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not made:
        print(f"demo: {args.out} is already there (same settings); nothing to do")
        return 0
    n_train, n_test = args.classes * args.per_class, args.classes * args.test_per_class
    print(f"demo: wrote {n_train} train + {n_test} test images ({args.classes} classes, "
          f"{args.size} px) to {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
