"""Training-loader throughput: the decoded-image cache against per-item cv2.imread each epoch.

    python benchmarks/loader_speed.py [--smoke] [--images 300] [--epochs 2] [--workers 0 2]

Makes competition-like JPEGs (300-800 px, grey and colour, pen strokes on white) under
benchmarks/_work/ (git-ignored), then times the same training augmentation at img_size
224 fed two ways, side by side in one run:

* reference: every epoch, each item is read with cv2.imread, converted to RGB and
  augmented at full size, then resized (the reference pipeline's way);
* cache: the images are decoded and resized once into a memory-mapped .npy
  (sketchtune.tables.load_images; its build time is reported separately as the first
  epoch's extra cost), and every epoch augments the cached 224 px arrays.

Both read files that the OS has cached after the first pass, so the difference is
decoding and full-size augmentation, not disk speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sketchtune.cache import load_images  # noqa: E402
from sketchtune.config import AugConfig  # noqa: E402
from sketchtune.images import SketchDataset
from sketchtune.transforms import build_train_transform  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "loader"
COMPETITION_TRAIN, COMPETITION_TEST = 15_021, 10_014


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEGs, 300-800 px a side, every third one colour; reused if already there."""
    paths = [folder / f"{i:05d}.JPEG" for i in range(n)]
    if all(p.is_file() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, p in enumerate(paths):
        h, w = (int(v) for v in rng.integers(300, 801, 2))
        colour = i % 3 == 2
        img = np.full((h, w, 3) if colour else (h, w), 255, np.uint8)
        for _ in range(int(rng.integers(4, 12))):
            pts = np.stack([rng.integers(0, w, 6), rng.integers(0, h, 6)], 1).astype(np.int32)
            rgb = tuple(int(v) for v in rng.integers(0, 90, 3))
            ink = rgb if colour else rgb[0]
            cv2.polylines(img, [pts], False, ink, int(rng.integers(1, 6)), cv2.LINE_AA)
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


class ReadEachEpoch(Dataset):
    """The reference way: cv2.imread + BGR->RGB + augmentation for every item, every epoch."""

    def __init__(self, paths: list[Path], transform) -> None:
        self.paths, self.transform = [str(p) for p in paths], transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = cv2.cvtColor(cv2.imread(self.paths[i]), cv2.COLOR_BGR2RGB)
        return self.transform(image=img)["image"], 0


def epoch_rates(ds: Dataset, workers: int, epochs: int) -> list[tuple[float, float]]:
    """(images per wall second, images per CPU second of this process) for each epoch.

    Workers are started before the clock. The CPU figure only means something with 0
    workers (the work then runs in this process); on a shared machine it is the one
    that other processes' load does not move.
    """
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(0))
    if workers:
        next(iter(loader))
    rates = []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(len(x) for x, _y in loader)
        rates.append((n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)))
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="40 images, 1 epoch, no workers")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds; the best epoch of each side is reported")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.epochs, args.rounds, args.workers = 40, 1, 1, [0]
    torch.set_num_threads(1)  # loaders are CPU-bound; keep torch from competing with cv2
    paths = make_images(WORK / "images", args.images)
    for p in paths:  # warm the OS file cache so neither side pays for the disk
        p.read_bytes()
    tf = build_train_transform(AugConfig(), args.size)

    cache_dir = WORK / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0 = time.perf_counter()
    images = load_images(paths, args.size, cache_dir, progress=False)
    build_s = time.perf_counter() - t0
    cached = SketchDataset(images, np.zeros(len(paths), np.int64), tf)
    reference = ReadEachEpoch(paths, tf)

    print(f"{len(paths)} JPEGs 300-800 px, img_size {args.size}, batch 32, {args.rounds} x "
          f"{args.epochs} epochs per side; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, {platform.machine()}")
    print(f"cache build (first epoch's extra cost): {build_s:.2f} s "
          f"({len(paths) / build_s:.0f} images/s, threads)")
    print("| workers | measure | reference imread+aug (img/s) | cache+aug (img/s) | speed-up |")
    print("|---|---|---|---|---|")
    for w in args.workers:
        # Alternate the two sides so that load from other processes hits both alike; the
        # best epoch is the least disturbed measurement of each.
        ref, fast = [], []
        for _ in range(args.rounds):
            ref += epoch_rates(reference, w, args.epochs)
            fast += epoch_rates(cached, w, args.epochs)
        for k, what in enumerate(["wall, best epoch", "wall, median epoch", "CPU, median epoch"]):
            if k == 2 and w:
                continue
            pick = max if k == 0 else np.median
            i = 1 if k == 2 else 0
            r, f = pick([x[i] for x in ref]), pick([x[i] for x in fast])
            print(f"| {w} | {what} | {r:.0f} | {f:.0f} | {f / r:.1f}x |")
    per = args.size * args.size * 3
    print(f"cache memory: N x {args.size} x {args.size} x 3 bytes = {per / 1e3:.1f} kB per image; "
          f"{len(paths)} images: {len(paths) * per / 1e6:.1f} MB; competition train "
          f"{COMPETITION_TRAIN:,}: {COMPETITION_TRAIN * per / 1e9:.2f} GB, test "
          f"{COMPETITION_TEST:,}: {COMPETITION_TEST * per / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
