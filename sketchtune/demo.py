"""Demo data in the competition's layout: handwritten digits, or synthetic sketches at full scale.

`python -m sketchtune.demo [--out data/demo] [--seed 0] [--classes 10] [--per-class 60]
[--test-per-class 100] [--size 64]` writes::

    <out>/train/<class_name>/img_0000.JPEG   train.csv        class_name,image_path,target
    <out>/test/0000.JPEG                     test.csv         image_path
    <out>/demo.json (the stamp)              test_labels.csv  image_path,target

The digits are real pen strokes (8x8, 1797 images, 174-183 per class), drawn dark on
white, upscaled smoothly and jittered by a small random affine so that reused digits
differ. At the default 60 + 100 per class no digit is drawn twice, so no test image is a
jittered copy of a train image; larger counts reuse digits. Every third file is a 3-channel
colour JPEG (blue ink on cream paper), the rest grayscale.

`--preset imagenet-sketch` writes the competition's exact shape instead (500 classes,
15,021 train and 10,014 test JPEGs of 150-900 px, see `sketchtune.synthetic`), in parallel
over `--workers` processes; `--scale 0.1` or `--classes/--per-class/--test-per-class`
shrink it with the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .cli import OneLineParser, add_debug_argument, run_cli
from .errors import DemoError, first_line
from .synthetic import FULL_CLASSES, build_synthetic, write_jpeg, write_tables
from .synthetic import VERSION as SYNTHETIC_VERSION

__all__ = ["MIN_PER_CLASS", "PRESETS", "DemoError", "main", "make_demo", "pick_digits"]

_VERSION = 1  # bump when the rendering changes, so an old folder is not taken as current
PRESETS = ("digits", "imagenet-sketch")
# 100 test images per class, 1,000 in all: the demo's test accuracy then has a sampling
# standard deviation of about 1.4 pp (at 0.75), against 3 pp with 200 images, small enough
# to check the submission estimate against. Predicting them is cheap at 64 px, and
# 60 + 100 <= 174 (the rarest digit) keeps every image a distinct digit.
_DIGITS = {"classes": 10, "per_class": 60, "test_per_class": 100, "size": 64}
# The shipped configs make 5 stratified folds (data.n_folds: 5) and every fold needs each
# class, so fewer than 5 train images of a class cannot be trained on with them.
MIN_PER_CLASS = 5



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


def pick_digits(targets: np.ndarray, target: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) indices of digits of class `target`: the class's digits in a random order, then
    again from the start (the affine jitter makes reused copies differ). The first
    `per_class` go to train, the rest to test."""
    return np.resize(rng.permutation(np.flatnonzero(targets == target)), n)


def _build(folder: Path, stamp: dict) -> tuple[int, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(stamp["seed"])
    classes = [f"n{c:08d}" for c in range(stamp["classes"])]
    n_train, n_test, size = stamp["per_class"], stamp["test_per_class"], stamp["size"]
    train_rows, test_rows = [], []
    for target, name in enumerate(classes):
        idx = pick_digits(digits.target, target, n_train + n_test, rng)
        (folder / "train" / name).mkdir(parents=True)
        for j, k in enumerate(idx):
            rows = train_rows if j < n_train else test_rows
            rows.append((name, target, digits.images[k], j))
    (folder / "test").mkdir(parents=True)
    count = 0
    for name, target, digit, j in train_rows:
        rel = f"train/{name}/img_{j:04d}.JPEG"
        write_jpeg(folder / rel, _render(digit, size, rng, colour=count % 3 == 2))
        train_rows[count] = (name, rel, target)
        count += 1
    # Test files are shuffled so their names say nothing about the class.
    perm = rng.permutation(len(test_rows))
    test_out = []
    for i, t in enumerate(perm):
        name, target, digit, _ = test_rows[t]
        rel = f"test/{i:04d}.JPEG"
        write_jpeg(folder / rel, _render(digit, size, rng, colour=i % 3 == 2))
        test_out.append((rel, target))
    write_tables(folder, pd.DataFrame(train_rows, columns=["class_name", "image_path", "target"]),
                 pd.DataFrame(test_out, columns=["image_path", "target"]))
    (folder / "demo.json").write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return len(train_rows), len(test_out)


def _read_stamp(out: Path) -> dict | None:
    try:
        return json.loads((out / "demo.json").read_text())
    except (OSError, ValueError):
        return None


def _check_counts(preset: str, classes: int, per_class: int | None,
                  test_per_class: int | None, size: int | None) -> None:
    """DemoError for a count that would make a data set the other CLIs refuse."""
    if preset not in PRESETS:
        raise DemoError(f"--preset must be one of {', '.join(PRESETS)} but got {preset!r}")
    top = 10 if preset == "digits" else 100_000
    if not 2 <= classes <= top:
        what = " (ten digits)" if preset == "digits" else ""
        raise DemoError(f"--classes must be in [2, {top}]{what} but got {classes}")
    if per_class is not None and per_class < MIN_PER_CLASS:
        raise DemoError(f"--per-class must be at least {MIN_PER_CLASS} but got {per_class}: "
                        f"the configs make {MIN_PER_CLASS} stratified folds and each fold "
                        "needs every class")
    if test_per_class is not None and test_per_class < 1:
        raise DemoError(f"--test-per-class must be at least 1 but got {test_per_class}: "
                        "a test.csv without rows is refused by every other command")
    if preset == "digits" and not 16 <= size <= 1024:
        raise DemoError(f"--size must be in [16, 1024] but got {size}")


def _remove_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):  # deepest first
        try:
            d.rmdir()
        except OSError:
            return


def _publish(out: Path, stamp: dict, build: Callable[[Path], object]) -> bool:
    """`build` a temporary sibling folder, then rename it to `out`; False if `out` is current.

    An existing empty `out` is replaced (rename does that atomically); any other existing
    `out` is refused. A failure leaves nothing: not the temporary folder, not the parents
    this call created. Every OSError becomes one DemoError line naming the path.
    """
    tmp: Path | None = None
    created: list[Path] = []
    done = False
    try:
        if out.exists():
            if not out.is_dir():
                raise DemoError(f"{out}: is a file, not a folder; delete it or choose another "
                                "--out")
            old = _read_stamp(out)
            if old == stamp:
                return False
            if old is not None or any(out.iterdir()):
                what = "a different demo" if old else "something that is not this demo"
                raise DemoError(f"{out}: already holds {what}; delete it or choose another "
                                "--out")
        for d in reversed(out.absolute().parents):
            if not d.exists():
                d.mkdir()  # one level at a time, to know which to remove after a failure
                created.append(d)
        tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        build(tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            # Another process finished the same demo first: theirs is as good as ours.
            if _read_stamp(out) != stamp:
                raise
            done = True
            return False
        done = True
        return True
    except OSError as err:
        name, why = err.filename or out, err.strerror or first_line(err)
        if tmp is not None and Path(name) == tmp:  # the folder beside `out` could not be made
            name, why = out.parent, f"{why} (cannot create {out.name} there)"
        elif tmp is not None and Path(name).is_relative_to(tmp):  # name the file, not tmp's
            name, why = out, f"{why} (writing {Path(name).relative_to(tmp)})"
        raise DemoError(f"{name}: {why}; nothing was written") from err
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            _remove_empty(created)


def make_demo(out: Path, *, preset: str = "digits", seed: int = 0, classes: int | None = None,
              per_class: int | None = None, test_per_class: int | None = None,
              size: int | None = None, workers: int | None = None,
              progress: bool = True) -> bool:
    """Write a demo data set to `out`; False if it is already there with the same stamp.

    digits: `classes` (2-10) x `per_class` train and x `test_per_class` test images of
    `size` px (defaults 10, 60, 100, 64). imagenet-sketch: `classes` (default 500) with the
    competition's counts, or `per_class` / `test_per_class` images for every class;
    `workers` processes (default: every CPU), a progress bar unless `progress` is False.
    Built in a temporary sibling folder and renamed into place, so an interrupted or
    failed run leaves no half-made data set. DemoError (one line) for any user error.
    """
    out = Path(out)
    if preset == "digits":
        classes, per_class, test_per_class, size = (
            _DIGITS[k] if v is None else v for k, v in
            zip(("classes", "per_class", "test_per_class", "size"),
                (classes, per_class, test_per_class, size), strict=True))
    elif size is not None:
        raise DemoError("--size applies to the digits preset only; imagenet-sketch images "
                        "are 150-900 px")
    if workers is not None and workers < 1:
        raise DemoError(f"--workers must be at least 1 but got {workers}")
    if classes is None:
        classes = FULL_CLASSES
    _check_counts(preset, classes, per_class, test_per_class, size)
    if preset == "digits":
        stamp = {"version": _VERSION, "seed": seed, "classes": classes, "per_class": per_class,
                 "test_per_class": test_per_class, "size": size}
        return _publish(out, stamp, lambda folder: _build(folder, stamp))

    stamp = {"preset": preset, "version": SYNTHETIC_VERSION, "seed": seed, "classes": classes,
             "per_class": per_class, "test_per_class": test_per_class}

    def build(folder: Path) -> None:
        build_synthetic(folder, stamp, workers=workers, progress=progress)
        (folder / "demo.json").write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")

    return _publish(out, stamp, build)


def _parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m sketchtune.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=PRESETS, default="digits",
                    help="digits: small, 64 px (default); imagenet-sketch: the competition's "
                         "shape, 500 classes, 15,021 + 10,014 JPEGs of 150-900 px")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder to create (default: data/demo, or data/synthetic_sketch "
                         "for imagenet-sketch); an existing empty folder is used")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=None,
                    help="number of classes (digits: 2-10, default 10; imagenet-sketch: "
                         "default 500)")
    ap.add_argument("--per-class", type=int, default=None,
                    help=f"train images per class, at least {MIN_PER_CLASS} (5 folds) "
                         "(digits: default 60; imagenet-sketch: default 29-31, as the real "
                         "data)")
    ap.add_argument("--test-per-class", type=int, default=None,
                    help="test images per class, at least 1 (digits: default 100; "
                         "imagenet-sketch: default 20-21, 10,014 for 500 classes)")
    ap.add_argument("--size", type=int, default=None,
                    help="image side in pixels (digits only; default 64)")
    ap.add_argument("--scale", type=float, default=None,
                    help="imagenet-sketch only: this share of the 500 classes, with the "
                         "competition's counts per class (e.g. 0.1: 50 classes)")
    ap.add_argument("--workers", type=int, default=None,
                    help="imagenet-sketch only: processes that render (default: every CPU)")
    add_debug_argument(ap)
    return ap


def _body(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    classes = args.classes
    if args.preset == "digits":
        if args.scale is not None or args.workers is not None:
            raise DemoError("--scale and --workers apply to --preset imagenet-sketch only")
    elif args.scale is not None:
        if classes is not None:
            raise DemoError("give --scale or --classes, not both")
        if not 0 < args.scale <= 1:
            raise DemoError(f"--scale must be in (0, 1] but got {args.scale}")
        classes = max(2, round(FULL_CLASSES * args.scale))
    out = args.out or Path("data/demo" if args.preset == "digits" else "data/synthetic_sketch")
    made = make_demo(out, preset=args.preset, seed=args.seed, classes=classes,
                     per_class=args.per_class, test_per_class=args.test_per_class,
                     size=args.size, workers=args.workers)
    if not made:
        print(f"demo: {out} is already there (same settings); nothing to do")
        return 0
    train = pd.read_csv(out / "train.csv")
    n_test = len(pd.read_csv(out / "test.csv"))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    size_text = f"{size / 1e3:.2f} GB" if size >= 1e3 else f"{size:.1f} MB"
    what = f"{args.size or _DIGITS['size']} px" if args.preset == "digits" else "150-900 px"
    print(f"demo: wrote {len(train)} train + {n_test} test images "
          f"({train['target'].nunique()} classes, {what}, {size_text}) to {out} in "
          f"{time.perf_counter() - t0:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_cli("sketchtune.demo", _body, args)


if __name__ == "__main__":
    raise SystemExit(main())
