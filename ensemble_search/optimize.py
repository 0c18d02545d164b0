"""`python -m ensemble_search.optimize`: choose ensemble weights from a sweep's OOF predictions.

Loads every complete candidate from the prediction store, runs every method with its
honest (nested-fold) estimate, estimates the chosen submission's own test accuracy
(`estimate.estimate_submission`, from the fold models' stored test predictions), and writes
under `<sweep>/ensemble/` (or --out): ensemble.json, candidates.csv, methods.csv,
correlation.csv/png, error_correlation.csv/png, error_overlap.csv/png and model_acc.png;
then logs them as the MLflow run `ensemble-optimize`.

The submission estimate is evidence, not a decision: optimize's job is the weights, which
`predict` needs and which do not depend on the test set. So when the test predictions
cannot be loaded for the current test.csv (a store written before folds recorded their
test images, a test.csv edited since the sweep, too little memory) optimize says so in one
warning, writes nulls for the estimate and finishes; `predict` then names the problem
itself if it concerns the submission too.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sketchtune import fs
from sketchtune.errors import DataError, EnsembleError, StoreError
from sketchtune.store import PredictionStore

from .cli import base_parser, load_sweep_config, out_dir, run_main, write_files
from .comparison import (
    Comparison,
    compare_methods,
    ensemble_summary,
    estimate_section,
    flat_metrics,
)
from .config import ensemble_config
from .estimate import SubmissionEstimate, estimate_submission
from .foldweights import fold_weights
from .load import OOFSet, load_fold_test_probs, load_oof, read_test_keys, read_train_rows
from .methods import METHODS, BestSingle, auto_methods
from .metrics import calibrate
from .plots import accuracy_bars_png, heatmap_png

__all__ = ["main", "render_outputs", "submission_estimate"]

PROG = "ensemble_search.optimize"
# The interval's coverage; 95 % is what the estimate was measured against
# (benchmarks/RESULTS-estimate.md).
LEVEL = 0.95

_log = logging.getLogger(__name__)


def _csv(df: pd.DataFrame, index: bool = False) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=index, float_format="%.6g")
    return buf.getvalue().encode()


def methods_table(res: Comparison) -> pd.DataFrame:
    rows = []
    for name, r in res.results.items():
        rows.append({"method": name, "chosen": name == res.method,
                     "n_used": int((r.weights > 0).sum()), "temperature": r.temperature,
                     "oof_acc": r.oof_acc, "oof_log_loss": r.oof_log_loss,
                     "honest_acc": r.honest.acc, "honest_log_loss": r.honest.log_loss})
    return pd.DataFrame(rows)


def submission_estimate(store: PredictionStore, oof: OOFSet, res: Comparison,
                        test_csv: Path, level: float = LEVEL,
                        test_root: Path | None = None) -> SubmissionEstimate:
    """The chosen method's submission estimate; EnsembleError (or StoreError, OSError,
    MemoryError) when the fold models' test predictions for `test_csv` cannot be loaded.

    The honest term uses the method's nested weights (fold k's weights never saw fold k's
    rows), so only candidates with weight in the submission or in some fold's nested
    weights are loaded, each with its K fold models' test probabilities.
    """
    r = res.chosen
    fold_w = np.stack(r.honest.fold_weights)  # (K, M), fold order r.honest.folds = 0..K-1
    keep = np.flatnonzero((r.weights > 0) | (fold_w > 0).any(axis=0))
    _, keys = read_test_keys(test_csv, test_root)
    fold_test = load_fold_test_probs(store, [oof.candidate_ids[j] for j in keep], keys,
                                     source=test_csv, n_folds=len(r.honest.folds))
    oof_probs = oof.probs[keep]
    if r.temperatures is not None:
        # `optimized` calibrates each candidate before weighting, and so does predict: the
        # estimate must be of that ensemble. (The nested fits had temperatures of their own;
        # the final ones stand in for them, a small optimism for `optimized` only.)
        temps = r.temperatures[keep]
        oof_probs = np.stack([calibrate(p, t).astype(np.float32)
                              for p, t in zip(oof_probs, temps, strict=True)])
        fold_test = np.stack([[calibrate(p, t).astype(np.float32) for p in per_fold]
                              for per_fold, t in zip(fold_test, temps, strict=True)])
    return estimate_submission(oof_probs, oof.targets, oof.folds, fold_test,
                               r.weights[keep], fold_weights=fold_w[:, keep], level=level)


def _estimate_or_why(store: PredictionStore, oof: OOFSet, res: Comparison, test_csv: Path,
                     test_root: Path | None) -> tuple[SubmissionEstimate | None, dict]:
    """(estimate, its ensemble.json section); (None, section saying why) on a load failure."""
    try:
        est = submission_estimate(store, oof, res, test_csv, test_root=test_root)
    except (EnsembleError, DataError, StoreError, OSError, MemoryError) as err:
        why = str(err) if not isinstance(err, MemoryError) else \
            "not enough memory for every fold model's test probabilities"
        _log.warning("no submission estimate (ensemble.json gets nulls; the weights are "
                     "unaffected): %s", why)
        return None, estimate_section(res, None, why, test_csv=str(test_csv))
    return est, estimate_section(res, est, test_csv=str(test_csv))


def headline(res: Comparison, est: SubmissionEstimate | None) -> str:
    """The first line of optimize's report: what the submission should score."""
    if est is None:
        return "expected test accuracy of the submission: not estimated (see the warning)"
    sign = "+" if est.gain >= 0 else "-"
    return (f"expected test accuracy of the submission: {est.acc:.3f} "
            f"({est.level * 100:.0f} % interval {est.low:.3f}-{est.high:.3f}; honest "
            f"single-fold estimate {est.honest:.3f} {sign} averaging gain {abs(est.gain):.3f})")


def render_outputs(res: Comparison, summary: dict, names: list[str],
                   estimate: SubmissionEstimate | None = None) -> dict[str, bytes]:
    """Every output file's bytes, made in memory so nothing is written before all succeeded."""
    corr = pd.DataFrame(res.correlation, index=names, columns=names)
    overlap = pd.DataFrame(res.error_overlap, index=names, columns=names)
    diversity = pd.DataFrame(res.diversity, index=names, columns=names)
    # The best single candidate is not an ensemble, and its candidate has a bar already.
    ens = {f"{n} (honest)": r.honest.acc for n, r in res.results.items()
           if n != BestSingle.name}
    return {
        "ensemble.json": (json.dumps(summary, indent=2) + "\n").encode(),
        "candidates.csv": _csv(res.candidates),
        "methods.csv": _csv(methods_table(res)),
        "correlation.csv": _csv(corr, index=True),
        "error_overlap.csv": _csv(overlap, index=True),
        "correlation.png": heatmap_png(
            res.correlation, names, "Pearson correlation of OOF probabilities", vmax=1.0),
        "error_correlation.csv": _csv(diversity, index=True),
        "error_correlation.png": heatmap_png(
            res.diversity, names, "Correlation of errors (what `pruned` uses; low = diverse)",
            vmax=1.0),
        "error_overlap.png": heatmap_png(
            res.error_overlap, names, "Fraction of train images both models get wrong",
            fmt=".3f", vmin=0.0),
        "model_acc.png": accuracy_bars_png(
            names, list(res.candidates["oof_acc"]), ens,
            "OOF accuracy: candidates and ensembles" if estimate is None else
            "OOF accuracy; the submission's expected test accuracy (green)",
            estimate=None if estimate is None else (
                f"submission ({res.method}, expected test)", estimate.acc, estimate.low,
                estimate.high)),
    }


def _body(args: argparse.Namespace) -> int:
    cfg = load_sweep_config(args)
    e = ensemble_config(cfg, str(args.config) + (" (with --set overrides)" if args.set else ""))
    store = PredictionStore(cfg.sweep_dir)
    if not fs.is_dir(store.candidates_dir):
        raise EnsembleError(f"{store.candidates_dir}: no prediction store (has the sweep run?)")
    rows = read_train_rows(cfg.data)
    wanted = [c.strip() for c in args.candidates.split(",") if c.strip()] \
        if args.candidates else None
    if wanted == []:  # "--candidates ,," would read as none given and say the store is empty
        raise EnsembleError(f"{store.candidates_dir}: --candidates {args.candidates!r} names no "
                            "candidate id; give ids separated by commas, or leave it out for "
                            "every complete candidate")
    if wanted is not None and len(set(wanted)) < len(wanted):
        twice = next(c for c in wanted if wanted.count(c) > 1)
        raise EnsembleError(f"{store.candidates_dir}: --candidates lists {twice} twice")
    oof = load_oof(store, rows, wanted)
    res = compare_methods(oof, e)
    est, est_info = _estimate_or_why(store, oof, res, Path(cfg.data.test_csv),
                                     cfg.data.test_image_root)
    summary = ensemble_summary(res, oof, e, est, est_info)
    summary.update(sweep=cfg.name, sweep_dir=str(cfg.sweep_dir), rows_from=str(rows.source),
                   fold_weights=fold_weights(res, oof, cfg.pseudo.method))
    files = render_outputs(res, summary, oof.names, est)
    folder = out_dir(args, cfg)
    paths = write_files(folder, files)

    from .tracking import log_run  # MLflow is imported by the CLIs only

    params = {"method": res.method, "requested_method": e.method, "metric": e.metric,
              "greedy_iterations": e.greedy_iterations, "greedy_sorted_init": e.greedy_sorted_init,
              "greedy_bagging": e.greedy_bagging, "temperature": e.temperature,
              "prune_threshold": e.prune_threshold, "seed": e.seed,
              "candidates": ",".join(oof.candidate_ids), "sweep_dir": str(cfg.sweep_dir)}
    run_id, why = log_run(cfg.tracking_uri, cfg.name, "ensemble-optimize", params,
                          flat_metrics(res, est), paths)
    if not args.quiet:
        _report(res, est, oof.names, folder, run_id, why, cfg.tracking_uri)
    elif run_id is None:
        print(f"{PROG}: MLflow not logged ({why}); files written to {folder}")
    return 0


def _report(res: Comparison, est: SubmissionEstimate | None, names: list[str], folder,
            run_id, why, uri) -> None:
    print(headline(res, est))
    print(f"{len(names)} candidates; methods compared in {res.seconds:.1f} s")
    print(methods_table(res).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    w = res.chosen.weights
    used = ", ".join(f"{names[j]} {w[j]:.3f}" for j in np.argsort(-w, kind="stable") if w[j] > 0)
    print(f"chosen: {res.method} ({res.requested}, metric {res.metric}): {used}")
    print(f"wrote {folder}")
    print(f"MLflow: run {run_id} in {uri}" if run_id else f"MLflow: NOT logged ({why})")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the method list below the options kept one method a line."""


def _methods_help() -> str:
    """The registered methods, for --help: what `ensemble.method` accepts."""
    width = max(len(n) for n in ("auto", *METHODS))
    lines = [f"  {'auto':<{width}}  the best honest estimate among {', '.join(auto_methods())}"]
    lines += [f"  {name:<{width}}  {(cls.__doc__ or '').strip().splitlines()[0]}"
              for name, cls in METHODS.items()]
    return "ensemble.method (--set ensemble.method=NAME):\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(PROG, "Choose ensemble weights from a sweep's out-of-fold predictions.")
    p.formatter_class, p.epilog = _HelpFormatter, f"{p.epilog}\n\n{_methods_help()}"
    p.add_argument("--candidates", metavar="IDS", default=None,
                   help="comma-separated candidate ids to use (each must be complete); "
                        "default: every complete candidate")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rc = run_main(PROG, _body, args)
    if rc == 0 and not args.quiet:
        print(f"done in {time.perf_counter() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
