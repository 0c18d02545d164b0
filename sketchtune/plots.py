"""Plots of one trial: the training curve logged beside each MLflow run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: trials and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["plot_training_curve"]


def plot_training_curve(history: Sequence[dict[str, float]], path: Path, title: str = "") -> Path:
    """Loss (train, val) and val_acc per epoch, two panels, saved as PNG."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key in ("train_loss", "val_loss"):
        ax_l.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key)
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss")
    ax_l.legend()
    ax_a.plot(epochs, [h.get("val_acc", float("nan")) for h in history], marker="o",
              color="tab:green", label="val_acc")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("val_acc")
    ax_a.set_ylim(0, 1)
    ax_a.legend()
    for ax in (ax_l, ax_a):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
