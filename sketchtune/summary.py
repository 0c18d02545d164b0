"""Per-candidate results of a sweep: fold mean/std, OOF accuracy, their MLflow runs, the table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import SweepConfig
from .planner import Candidate
from .store import PredictionStore

if TYPE_CHECKING:  # mlflow is imported only when a sweep logs
    from .tracking import Tracker

__all__ = ["CandidateSummary", "format_table", "log_summaries", "summarise"]


@dataclass(frozen=True)
class CandidateSummary:
    candidate: Candidate
    folds_done: int
    val_acc_mean: float
    val_acc_std: float
    oof_acc: float | None  # over every train row, once all folds are in
    path: Path


def summarise(cfg: SweepConfig, candidates: list[Candidate]) -> list[CandidateSummary]:
    """One summary per candidate, from the prediction store (folds of this sweep's n_folds)."""
    store = PredictionStore(cfg.sweep_dir)
    out = []
    for c in candidates:
        folds = [k for k in store.folds(c.id) if k < cfg.data.n_folds]
        accs = [store.read_manifest(c.id, k)["metrics"]["val_acc"] for k in folds]
        oof = None
        if len(folds) == cfg.data.n_folds:
            _, correct = store.oof_correct(c.id, folds)
            oof = int(correct.sum()) / max(len(correct), 1)
        out.append(CandidateSummary(
            c, len(folds), float(np.mean(accs)) if accs else float("nan"),
            float(np.std(accs)) if accs else float("nan"), oof, store.candidate_dir(c.id)))
    return out


def log_summaries(tracker: Tracker, parent: str, summaries: list[CandidateSummary]) -> None:
    """One MLflow run per complete candidate, under the sweep: fold mean/std, OOF accuracy.

    A re-run finds the candidate's run again by its tags instead of making another.
    """
    from .tracking import flatten

    for s in summaries:
        if s.oof_acc is None:
            continue
        c = s.candidate
        key = {"sketchtune.stage": "summary", "candidate_id": c.id}
        # The tag keeps its name "source" (what MLflow users filter on); it is the origin.
        res = tracker.safe("start a summary run", tracker.get_or_create_run,
                           f"candidate-{c.backbone}-{c.id}",
                           {"mlflow.parentRunId": parent, "stage": "summary",
                            "backbone": c.backbone, "source": c.origin}, key, True)
        if res is None:
            continue
        run_id, _ = res
        tracker.log_params(run_id, flatten(c.train.model_dump(mode="json")))
        tracker.log_metrics(run_id, {"val_acc_mean": s.val_acc_mean, "val_acc_std": s.val_acc_std,
                                     "oof_acc": s.oof_acc, "folds": s.folds_done}, step=0)
        tracker.set_tags(run_id, {"predictions": str(s.path)})
        tracker.end(run_id)


def format_table(summaries: list[CandidateSummary], n_folds: int) -> str:
    """The table the sweep prints: one row per candidate, best OOF accuracy first."""
    # The "source" column is the candidate's origin (search, fixed, base), as printed before.
    rows = [("candidate", "backbone", "source", "folds", "val_acc (mean±std)", "oof_acc",
             "predictions")]
    for s in sorted(summaries, key=lambda s: -(s.oof_acc or -1)):
        rows.append((s.candidate.id, s.candidate.backbone, s.candidate.origin,
                     f"{s.folds_done}/{n_folds}", f"{s.val_acc_mean:.4f}±{s.val_acc_std:.4f}",
                     "-" if s.oof_acc is None else f"{s.oof_acc:.4f}", str(s.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)
