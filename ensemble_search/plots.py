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
                      ensembles: dict[str, float], title: str = "OOF accuracy",
                      estimate: tuple[str, float, float, float] | None = None) -> bytes:
    """Horizontal bars: each candidate's OOF accuracy, then the ensembles' (highlighted).

    estimate: (label, acc, low, high), the submission's expected test accuracy, drawn last
    in its own colour with its interval as an error bar (a different quantity from the OOF
    bars: what the averaged fold models should score on the test set).
    """
    labels = list(names) + list(ensembles)
    values = list(accs) + list(ensembles.values())
    colors = ["tab:blue"] * len(names) + ["tab:orange"] * len(ensembles)
    if estimate is not None:
        labels.append(estimate[0])
        values.append(estimate[1])
        colors.append("tab:green")
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * len(labels)))
    y = np.arange(len(labels))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    lo, hi = min(values), max(values)
    if estimate is not None:
        _, acc, low, high = estimate
        ax.errorbar(acc, y[-1], xerr=[[acc - low], [high - acc]], fmt="none", ecolor="black",
                    capsize=4, linewidth=1)
        lo, hi = min(lo, low), max(hi, high)
    pad = 0.12 if estimate is not None else 0.03  # room for the value (and interval) labels
    ax.set_xlim(max(0.0, lo - 0.05), min(1.0, hi + pad))
    for yi, v in zip(y, values, strict=True):
        if estimate is not None and yi == y[-1]:  # beyond the error bar, with the interval
            ax.text(estimate[3], yi, f" {v:.4f} [{estimate[2]:.3f}, {estimate[3]:.3f}]",
                    va="center", fontsize=7)
        else:
            ax.text(v, yi, f" {v:.4f}", va="center", fontsize=7)
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    return _png(fig)
