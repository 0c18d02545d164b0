"""Compare every registered ensemble method on an `OOFSet`, estimated honestly; choose one.

Each method is fitted twice over: on every OOF row (its final weights, and an optimistic
OOF score) and inside the outer fold split (`nested.honest_estimate`). `auto` picks the
method (among those with `in_auto`) with the best honest estimate on the configured metric.
The methods come from the registry (`methods.METHODS`); none is named here.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ensemble_search.config import EnsembleConfig

from .correlation import corr_from_gram, error_correlation, error_overlap, fold_gram
from .estimate import SubmissionEstimate
from .load import OOFSet
from .methods import (
    EnsembleMethod,
    auto_methods,
    build_method,
    by_cost,
    fit_view,
    reported_methods,
)
from .metrics import log_loss_from_true
from .nested import HonestScore, honest_estimate
from .oofview import OOFView, RowFacts
from .spec import FORMAT

__all__ = ["ESTIMATE_SCORES", "Comparison", "MethodResult", "candidate_table", "choose",
           "compare_methods", "ensemble_summary", "estimate_section", "flat_metrics"]

# ensemble.json's scores and MLflow's metrics for the submission estimate, one flat name each.
ESTIMATE_SCORES = ("submission_estimate_acc", "submission_estimate_low",
                   "submission_estimate_high")

_log = logging.getLogger(__name__)


@dataclass
class MethodResult:
    name: str
    weights: np.ndarray  # (M,) fitted on every OOF row
    temperature: float  # one temperature on the average (log loss only)
    temperatures: np.ndarray | None  # (M,) per-candidate calibration first, None: none
    oof_log_loss: float  # optimistic: the same rows chose the weights
    oof_acc: float
    honest: HonestScore


@dataclass
class Comparison:
    method: str  # the chosen one
    requested: str  # cfg.method, possibly "auto"
    metric: str  # "acc" or "log_loss"
    results: dict[str, MethodResult]  # every registered method, `auto`'s choices first
    candidates: pd.DataFrame  # one row per candidate: candidate_table + weight
    correlation: np.ndarray  # (M, M) Pearson of flattened OOF probabilities
    error_overlap: np.ndarray  # (M, M) fraction of rows both get wrong
    diversity: np.ndarray  # (M, M) phi correlation of error indicators (what `pruned` uses)
    seconds: float

    @property
    def chosen(self) -> MethodResult:
        return self.results[self.method]


def candidate_table(oof: OOFSet,
                    facts: RowFacts | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Per candidate: id, name, backbone, base_candidate, view, weights, oof_acc, oof_log_loss,
    fold<k>_acc; and (M, N) correct. The views and EMA weights of one training share its
    base_candidate: correlated candidates, one fold model per row for all of them."""
    facts = RowFacts(oof.probs, oof.targets) if facts is None else facts
    correct, q = facts.correct, facts.q  # (M, N), (N, M)
    mfs = oof.manifests or [{} for _ in oof.candidate_ids]
    df = pd.DataFrame({
        "candidate_id": oof.candidate_ids,
        "name": oof.names,
        "backbone": [str((mf.get("config") or {}).get("model", {}).get("name", ""))
                     for mf in mfs],
        # Folds written before views existed name none: each is its own base, raw weights.
        "base_candidate": [str(mf.get("base_candidate") or c)
                           for mf, c in zip(mfs, oof.candidate_ids, strict=True)],
        "view": [str(mf.get("view") or "") for mf in mfs],
        "weights": [str(mf.get("weights") or "raw") for mf in mfs],
        "oof_acc": correct.mean(axis=1),
        "oof_log_loss": log_loss_from_true(q),
    })
    for k in np.unique(oof.folds):
        df[f"fold{k}_acc"] = correct[:, oof.folds == k].mean(axis=1)
    return df, correct


def choose(results: dict[str, MethodResult], metric: str) -> str:
    """The `auto` method with the best honest estimate (acc ties: lower log loss; then the
    one registered first, the simpler)."""
    names = [n for n in auto_methods() if n in results]
    if metric == "acc":
        key = [(-results[n].honest.acc, results[n].honest.log_loss) for n in names]
    else:
        key = [(results[n].honest.log_loss, -results[n].honest.acc) for n in names]
    return names[min(range(len(names)), key=key.__getitem__)]


def compare_methods(oof: OOFSet, cfg: EnsembleConfig) -> Comparison:
    """Fit and honestly estimate every registered method; pick `cfg.method` or, if auto, the
    best.

    Runs with one BLAS thread: every matrix product here is thin ((M, n) by (n, M), M ~ 40),
    and OpenBLAS's threads spent up to 35x the product's own time waiting for each other on
    a 2-core machine (`error_correlation`: 0.16 s with threads, 0.005 s without).
    """
    with threadpool_limits(1, user_api="blas"):
        return _compare_methods(oof, cfg)


def _compare_methods(oof: OOFSet, cfg: EnsembleConfig) -> Comparison:
    t0 = time.perf_counter()
    probs, y = oof.probs, oof.targets
    names = reported_methods()
    factories = {name: partial(build_method, cfg, name) for name in names}

    def fit_all(name: str) -> tuple[EnsembleMethod, tuple[np.ndarray, np.ndarray]]:
        method = fit_view(build_method(cfg, name), every_row)
        return method, method.score_view(every_row)

    # The k folds of the honest estimate, the fits on every row and the correlation picture
    # are independent numpy work on shared read-only arrays: threads overlap them (numpy
    # releases the GIL on large arrays). The longest jobs go in first.
    with ThreadPoolExecutor(_workers()) as pool:
        # The picture needs no per-row facts: its two halves keep the threads busy while
        # this one computes them. No method needs it.
        half = probs.shape[1] // 2
        corr_jobs = [pool.submit(fold_gram, part, np.zeros(part.shape[1], dtype=np.int64))
                     for part in (probs[:, :half], probs[:, half:]) if part.shape[1]]
        facts = RowFacts(probs, y).prepare()  # per-row facts, once for every method and fold
        table, correct = candidate_table(oof, facts)
        every_row = OOFView(probs, y, facts=facts)
        # costliest first (EnsembleMethod.cost): nothing long is left for the end
        full_jobs = {name: pool.submit(fit_all, name)
                     for name in by_cost(names)}
        honest = honest_estimate(probs, y, oof.folds, factories, facts, pool=pool)
        grams = [job.result() for job in corr_jobs]
        corr = corr_from_gram(sum(g[0][0] for g in grams), sum(g[1][0] for g in grams),
                              probs.shape[1] * probs.shape[2])  # = prob_correlation(probs)
        fitted = {name: job.result() for name, job in full_jobs.items()}
    results: dict[str, MethodResult] = {}
    for name in names:
        method, (p_true, right) = fitted[name]
        results[name] = MethodResult(
            name=name, weights=np.asarray(method.weights_, dtype=np.float64),
            temperature=float(method.temperature_),
            temperatures=None if method.temperatures_ is None
            else np.asarray(method.temperatures_, dtype=np.float64),
            oof_log_loss=log_loss_from_true(p_true), oof_acc=float(right.mean()),
            honest=honest[name],
        )
        _log.debug("%s: oof_log_loss %.4f, honest_log_loss %.4f", name,
                  results[name].oof_log_loss, honest[name].log_loss)
    chosen = choose(results, cfg.metric) if cfg.method == "auto" else cfg.method
    table["weight"] = results[chosen].weights
    return Comparison(
        method=chosen, requested=cfg.method, metric=cfg.metric, results=results,
        candidates=table, correlation=corr,
        error_overlap=error_overlap(correct), diversity=error_correlation(correct),
        seconds=time.perf_counter() - t0,
    )


def _workers() -> int:
    """Threads for compare_methods: the cores this process may use, at most 8 (each thread
    holds a few (n, C) float64 buffers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def flat_metrics(res: Comparison,
                 estimate: SubmissionEstimate | None = None) -> dict[str, float]:
    """Flat metric names `<scope>_<acc|log_loss>`: `ensemble_*` for the chosen method,
    `<method>_*` for each one (`mean_honest_acc`, `best_single_oof_log_loss`); with an
    estimate, `submission_estimate_{acc,low,high}` (`ESTIMATE_SCORES`)."""
    out: dict[str, float] = {}
    for prefix, r in [("ensemble", res.chosen), *res.results.items()]:
        out[f"{prefix}_oof_acc"] = r.oof_acc
        out[f"{prefix}_oof_log_loss"] = r.oof_log_loss
        out[f"{prefix}_honest_acc"] = r.honest.acc
        out[f"{prefix}_honest_log_loss"] = r.honest.log_loss
    out["n_candidates"] = float(len(res.candidates))
    out["n_chosen"] = float((res.chosen.weights > 0).sum())
    out["ensemble_temperature"] = res.chosen.temperature
    if estimate is not None:
        out.update(zip(ESTIMATE_SCORES, (estimate.acc, estimate.low, estimate.high),
                       strict=True))
    return out


def estimate_section(res: Comparison, estimate: SubmissionEstimate | None,
                     why: str = "", **extra: object) -> dict:
    """ensemble.json's `submission_estimate`: the chosen method's estimate and its parts
    (`SubmissionEstimate.as_dict`, plus `extra`), or `available: false` and why not."""
    if estimate is None:
        return {"available": False, "method": res.method, "reason": why, **extra}
    return {"available": True, "method": res.method, **estimate.as_dict(), **extra}


def _weights(r: MethodResult, ids: list[str]) -> dict[str, float]:
    return {ids[j]: float(r.weights[j]) for j in np.flatnonzero(r.weights)}


def ensemble_summary(res: Comparison, oof: OOFSet, cfg: EnsembleConfig,
                     estimate: SubmissionEstimate | None = None,
                     estimate_info: dict | None = None) -> dict:
    """The content of ensemble.json: what predict needs, and the evidence for the choice.

    `estimate`: the submission estimate, or None when it could not be made; its scores are
    then null and `estimate_info` (from `estimate_section`) says why.
    """
    ids, names = oof.candidate_ids, oof.names
    w = res.chosen.weights
    temps = res.chosen.temperatures
    chosen = [{"candidate_id": ids[j], "name": names[j], "weight": float(w[j]),
               # per-candidate calibration (`optimized`): predict applies it before weighting
               **({} if temps is None else {"temperature": float(temps[j])})}
              for j in sorted(np.flatnonzero(w), key=lambda j: (-w[j], j))]
    n_test = [mf.get("n_test") for mf in oof.manifests]
    return {
        "format": FORMAT,
        "method": res.method,
        "requested_method": res.requested,
        "metric": res.metric,
        "temperature": res.chosen.temperature,
        "candidates": chosen,
        "num_classes": oof.num_classes,
        "n_train": len(oof.targets),
        "n_folds": len(np.unique(oof.folds)),
        "n_test": n_test[0] if n_test and len(set(n_test)) == 1 else None,
        "scores": {**dict.fromkeys(ESTIMATE_SCORES), **flat_metrics(res, estimate)},
        "note": "oof_* scores weights fitted on every OOF row (optimistic); honest_* scores "
                "weights fitted on k-1 folds on the held-out fold (one fold model per row); "
                "submission_estimate_* is the expected test accuracy of the submission, which "
                "averages every fold model, with its interval (null when the test "
                "predictions could not be loaded).",
        "submission_estimate": estimate_info if estimate_info is not None
        else estimate_section(res, estimate, "not computed"),
        "methods": {
            name: {
                "weights": _weights(r, ids), "temperature": r.temperature,
                "oof_acc": r.oof_acc, "oof_log_loss": r.oof_log_loss,
                "honest_acc": r.honest.acc, "honest_log_loss": r.honest.log_loss,
                "honest_fold_acc": r.honest.fold_acc,
                "honest_fold_log_loss": r.honest.fold_log_loss,
            }
            for name, r in res.results.items()
        },
        "considered": [{"candidate_id": c, "name": n} for c, n in zip(ids, names, strict=True)],
        "skipped": oof.skipped,
        "ensemble_config": cfg.model_dump(mode="json"),
        "seconds": res.seconds,
    }
