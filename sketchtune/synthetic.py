"""Synthetic sketches of the competition's exact shape (500 classes, 15,021 / 10,014 JPEGs).

Each class is a seeded set of strokes (Bezier curves, polylines, arcs, polygons) in a unit
square. Every image draws its class's strokes through its own random affine with jittered
points, a random stroke width and pencil grey, dropped strokes, a few distractor strokes,
an occluding patch and paper grain, on a canvas of 150-900 px a side (mixed, not square).
About 15 % of the files are colour (coloured ink on tinted paper), the rest grayscale.

Every image has its own seed (the data set's seed, train or test, its index), so the bytes
do not depend on how the work is split over processes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

__all__ = ["FULL_CLASSES", "FULL_TEST", "FULL_TRAIN", "Job", "build_synthetic", "class_counts",
           "encode_jpeg", "render", "write_jpeg", "write_tables"]

FULL_CLASSES, FULL_TRAIN, FULL_TEST = 500, 15_021, 10_014  # the competition's split
VERSION = 1  # bump when the rendering changes, so an old folder is not taken as current
_JPEG_QUALITY = 90
_MIN_SIDE, _MAX_SIDE = 150, 900
_COLOUR_SHARE = 0.15
_CHUNK = 64  # images per task: large enough to amortise pickling, small enough for the bar
_TRAIN, _TEST = 0, 1  # the stream of a seed: which images an index counts


@dataclass(frozen=True)
class Job:
    """One image to render: its file (relative to the data set's root), class and seed key."""

    rel: str
    target: int
    kind: int  # _TRAIN or _TEST
    index: int  # position within its kind: with `kind` and the seed, the image's own seed


def class_counts(classes: int, per_class: int | None, test_per_class: int | None,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes,) train counts and (classes,) test counts, int64.

    Without a fixed count the totals are the competition's, scaled to `classes`
    (15,021 / 10,014 for 500): train 29-31 per class (30 on average, as in the real
    data), test 20-21; which classes get more is seeded.
    """
    rng = np.random.default_rng([seed, 2])
    if per_class is None:
        extra = round(FULL_TRAIN * classes / FULL_CLASSES) - 30 * classes
        up = round(0.24 * classes)  # ~a quarter of the classes at 31, fewer at 29
        down = max(up - extra, 0)
        up = down + extra
        train = np.full(classes, 30, dtype=np.int64)
        order = rng.permutation(classes)
        train[order[:up]] += 1
        train[order[up:up + down]] -= 1
    else:
        train = np.full(classes, per_class, dtype=np.int64)
    if test_per_class is None:
        total = round(FULL_TEST * classes / FULL_CLASSES)
        test = np.full(classes, total // classes, dtype=np.int64)
        test[rng.permutation(classes)[:total - test.sum()]] += 1
    else:
        test = np.full(classes, test_per_class, dtype=np.int64)
    return train, test


# ---------------------------------------------------------------- rendering


def _bezier(p: np.ndarray, n: int = 24) -> np.ndarray:
    """(4, 2) control points -> (n, 2) points on the cubic curve."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1]
            + 3 * (1 - t) * t ** 2 * p[2] + t ** 3 * p[3])


def _stroke(rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """One random stroke in the unit square: (n, 2) points and whether it is closed."""
    kind = rng.integers(4)
    if kind == 0:  # a curve
        return _bezier(rng.uniform(0.05, 0.95, (4, 2))), False
    if kind == 1:  # a polyline
        return rng.uniform(0.05, 0.95, (int(rng.integers(3, 6)), 2)), False
    if kind == 2:  # an arc of an ellipse
        c, r = rng.uniform(0.3, 0.7, 2), rng.uniform(0.1, 0.3, 2)
        a0 = rng.uniform(0, 2 * np.pi)
        a = a0 + np.linspace(0.0, rng.uniform(1.0, 2 * np.pi), 24)
        return c + r * np.stack([np.cos(a), np.sin(a)], 1), False
    c, r = rng.uniform(0.3, 0.7, 2), rng.uniform(0.1, 0.3)  # a polygon
    a = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, int(rng.integers(3, 7)),
                                                endpoint=False)
    return c + r * np.stack([np.cos(a), np.sin(a)], 1), True


@functools.lru_cache(maxsize=1024)
def _template(seed: int, target: int) -> tuple[tuple[np.ndarray, bool], ...]:
    """The strokes that make class `target` (3-6 of them), the same in every process."""
    rng = np.random.default_rng([seed, 3, target])
    return tuple(_stroke(rng) for _ in range(int(rng.integers(3, 7))))


def _canvas_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) in [150, 900]: log-uniform size, aspect 0.6-1.7 either way."""
    side = np.exp(rng.uniform(np.log(_MIN_SIDE * 1.3), np.log(_MAX_SIDE)))
    aspect = np.exp(rng.uniform(-0.5, 0.5))
    h, w = side / np.sqrt(aspect), side * np.sqrt(aspect)
    return (int(np.clip(round(h), _MIN_SIDE, _MAX_SIDE)),
            int(np.clip(round(w), _MIN_SIDE, _MAX_SIDE)))


def _affine(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(2, 3): unit square -> canvas pixels, with rotation, shear, scale and shift."""
    side = min(h, w) * rng.uniform(0.65, 0.95)
    angle = np.deg2rad(rng.uniform(-25, 25))
    shear = rng.uniform(-0.2, 0.2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    lin = side * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    centre = np.array([w / 2, h / 2]) + rng.uniform(-0.08, 0.08, 2) * np.array([w, h])
    return np.hstack([lin, (centre - lin @ np.array([0.5, 0.5]))[:, None]])


def render(seed: int, target: int, kind: int, index: int) -> np.ndarray:
    """One sketch of class `target`: (H, W) uint8 grey or (H, W, 3) uint8 BGR, white paper."""
    rng = np.random.default_rng([seed, kind, index])
    h, w = _canvas_size(rng)
    m = _affine(rng, h, w)
    strokes = [s for s in _template(seed, target) if rng.random() > 0.12]  # some left out
    strokes += [_stroke(rng) for _ in range(int(rng.integers(0, 3)))]  # distractors
    ink = np.zeros((h, w), np.uint8)
    width = max(1, round(min(h, w) * rng.uniform(0.004, 0.014)))
    for pts, closed in strokes:
        # A hand never draws the same line: each stroke moves a little, and wobbles.
        pts = pts + rng.normal(0.0, 0.02, 2) + rng.normal(0.0, 0.004, pts.shape)
        xy = pts @ m[:, :2].T + m[:, 2]
        # Pencil: a firm line, then a lighter, slightly offset second pass.
        for dark, off in ((255, 0.0), (150, rng.normal(0.0, 1.5, 2))):
            poly = np.rint((xy + off) * 16).astype(np.int32)  # shift=4: sub-pixel points
            cv2.polylines(ink, [poly], closed, dark, max(1, width - (dark < 255)),
                          cv2.LINE_AA, shift=4)
    if rng.random() < 0.3:  # an occluding patch of paper over part of the drawing
        ph, pw = (rng.uniform(0.15, 0.35, 2) * (h, w)).astype(int)
        y, x = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        ink[y:y + ph, x:x + pw] = 0
    # Graphite is uneven: modulate the ink by a coarse grain field (cheap: made small, upscaled).
    grain = cv2.resize(rng.uniform(0.55, 1.0, (h // 6 + 1, w // 6 + 1)).astype(np.float32),
                       (w, h), interpolation=cv2.INTER_LINEAR)
    ink_f = ink.astype(np.float32) * (grain * rng.uniform(0.55, 0.9) / 255.0)
    paper_noise = cv2.resize(rng.normal(0.0, 4.0, (h // 4 + 1, w // 4 + 1)).astype(np.float32),
                             (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() >= _COLOUR_SHARE:
        img = (250.0 + paper_noise) * (1.0 - ink_f) + 30.0 * ink_f
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
    paper = rng.uniform(225.0, 255.0, 3).astype(np.float32)  # BGR, tinted
    pen = rng.uniform(0.0, 160.0, 3).astype(np.float32)  # a colour pencil or ink, any hue
    img = (paper + paper_noise[..., None]) * (1.0 - ink_f[..., None]) + pen * ink_f[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def encode_jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".JPEG", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    assert ok, "JPEG encoding failed"  # only for a malformed array, which render never makes
    return buf.tobytes()


def write_jpeg(path: Path, img: np.ndarray) -> None:
    """The one place demo images are written (tests make it fail to simulate a full disk)."""
    path.write_bytes(encode_jpeg(img))


def write_tables(folder: Path, train: pd.DataFrame, test: pd.DataFrame) -> None:
    """train.csv (class_name,image_path,target), test.csv (image_path) and test_labels.csv
    (image_path,target, so a demo's submission can be scored) in `folder`."""
    train[["class_name", "image_path", "target"]].to_csv(folder / "train.csv", index=False)
    test[["image_path"]].to_csv(folder / "test.csv", index=False)
    test[["image_path", "target"]].to_csv(folder / "test_labels.csv", index=False)


def _render_chunk(folder: str, seed: int, jobs: list[Job]) -> int:
    """Render and write `jobs` into `folder`; the number written. Runs in a worker process."""
    cv2.setNumThreads(1)  # the processes are the parallelism; threads would oversubscribe
    for job in jobs:
        write_jpeg(Path(folder) / job.rel, render(seed, job.target, job.kind, job.index))
    return len(jobs)


# ---------------------------------------------------------------- the data set


def _jobs(classes: list[str], train_n: np.ndarray, test_n: np.ndarray,
          seed: int) -> tuple[list[Job], list[Job]]:
    train = [Job(f"train/{name}/img_{j:04d}.JPEG", t, _TRAIN, 0)
             for t, name in enumerate(classes) for j in range(int(train_n[t]))]
    train = [Job(j.rel, j.target, _TRAIN, i) for i, j in enumerate(train)]
    # Test files are shuffled so their names say nothing about the class.
    targets = np.repeat(np.arange(len(classes)), test_n)
    targets = targets[np.random.default_rng([seed, 4]).permutation(len(targets))]
    width = max(4, len(str(len(targets) - 1)))
    test = [Job(f"test/{i:0{width}d}.JPEG", int(t), _TEST, i) for i, t in enumerate(targets)]
    return train, test


def _chunks(jobs: list[Job]) -> Iterator[list[Job]]:
    for i in range(0, len(jobs), _CHUNK):
        yield jobs[i:i + _CHUNK]


def _run(folder: Path, seed: int, jobs: list[Job], workers: int, progress: bool) -> None:
    bar = tqdm(total=len(jobs), unit="img", desc="synthetic sketches", disable=not progress,
               smoothing=0.1, leave=False)  # the summary line says the outcome
    with bar:
        if workers <= 1:  # in this process: no start-up cost, and tests can patch the writer
            for chunk in _chunks(jobs):
                bar.update(_render_chunk(str(folder), seed, chunk))
            return
        # spawn, not fork: the caller may hold threads (torch, Ray) that a fork would copy.
        import multiprocessing

        ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            pending = {ex.submit(_render_chunk, str(folder), seed, c) for c in _chunks(jobs)}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    bar.update(f.result())  # re-raises a worker's error here
        finally:
            # On an error, drop the queued chunks and wait for the running ones, so no
            # worker is still writing when the caller removes the folder.
            ex.shutdown(wait=True, cancel_futures=True)


def build_synthetic(folder: Path, stamp: dict, *, workers: int | None = None,
                    progress: bool = True) -> tuple[int, int]:
    """Write the data set described by `stamp` into the new folder `folder`; (train, test) counts.

    Layout: train/<class>/img_NNNN.JPEG, test/NNNN.JPEG, train.csv (class_name,image_path,
    target), test.csv (image_path), test_labels.csv (image_path,target). The caller writes
    the stamp and moves the folder into place.
    """
    seed, n = stamp["seed"], stamp["classes"]
    train_n, test_n = class_counts(n, stamp["per_class"], stamp["test_per_class"], seed)
    classes = [f"n{c:08d}" for c in range(n)]
    train, test = _jobs(classes, train_n, test_n, seed)
    for name in classes:
        (folder / "train" / name).mkdir(parents=True)
    (folder / "test").mkdir()
    _run(folder, seed, train + test, workers or os.cpu_count() or 1, progress)
    write_tables(folder, pd.DataFrame({"class_name": [classes[j.target] for j in train],
                                       "image_path": [j.rel for j in train],
                                       "target": [j.target for j in train]}),
                 pd.DataFrame({"image_path": [j.rel for j in test],
                               "target": [j.target for j in test]}))
    return len(train), len(test)
