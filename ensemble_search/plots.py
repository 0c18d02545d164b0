"""Figures of an ensemble search, rendered to PNG bytes (written later, atomically)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["accuracy_bars_png", "heatmap_png"]


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def heatmap_png(matrix: np.ndarray, names: Sequence[str], title: str, fmt: str = ".2f",
                vmin: float | None = None, vmax: float | None = None) -> bytes:
    """matrix: (M, M) -> a labelled heatmap; values are written in the cells when M <= 20."""
    m = len(names)
    size = min(4 + 0.45 * m, 24)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(matrix, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(m), names, rotation=90, fontsize=8)
    ax.set_yticks(range(m), names, fontsize=8)
    if m <= 20:
        mid = np.nanmean(matrix)
        for i in range(m):
            for j in range(m):
                ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="black" if matrix[i, j] > mid else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    return _png(fig)


def accuracy_bars_png(names: Sequence[str], accs: Sequence[float],
                      ensembles: dict[str, float], title: str = "OOF accuracy") -> bytes:
    """Horizontal bars: each candidate's OOF accuracy, then the ensembles' (highlighted)."""
    labels = list(names) + list(ensembles)
    values = list(accs) + list(ensembles.values())
    colors = ["tab:blue"] * len(names) + ["tab:orange"] * len(ensembles)
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * len(labels)))
    y = np.arange(len(labels))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    lo = max(0.0, min(values) - 0.05)
    ax.set_xlim(lo, min(1.0, max(values) + 0.03))
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi, f" {v:.4f}", va="center", fontsize=7)
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    return _png(fig)
