"""Tiny image folders and CSVs for the data-layer tests (no conftest: the lead owns it)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd


def sketch(seed: int, size: int = 40, colour: bool = False) -> np.ndarray:
    """A few dark random lines on white -> (size, size) uint8 or (size, size, 3) uint8 BGR."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3) if colour else (size, size), 255, np.uint8)
    for _ in range(3):
        p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
        ink = tuple(int(v) for v in rng.integers(0, 120, 3)) if colour else int(rng.integers(0, 80))
        cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), ink, 2)
    return img


def make_dataset(root: Path, n_classes: int = 3, per_class: int = 5, size: int = 40) -> Path:
    """Write `root/train/<class>/<i>.JPEG` (mixed grey and colour) and `root/train.csv`."""
    rows = []
    for c in range(n_classes):
        name = f"n{c:08d}"
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rel = f"train/{name}/{i}.JPEG"
            cv2.imwrite(str(root / rel), sketch(c * 100 + i, size, colour=i % 2 == 1))
            rows.append((name, rel, c))
    csv = root / "train.csv"
    pd.DataFrame(rows, columns=["class_name", "image_path", "target"]).to_csv(csv, index=False)
    return csv


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
