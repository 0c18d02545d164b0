"""`python -m ensemble_search.optimize`: choose ensemble weights from a sweep's OOF predictions.

Loads every complete candidate from the prediction store, runs every method with its
honest (nested-fold) estimate, and writes under `<sweep>/ensemble/` (or --out):
ensemble.json, candidates.csv, methods.csv, correlation.csv/png, error_overlap.csv/png
and model_acc.png; then logs them as the MLflow run `ensemble-optimize`.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import pandas as pd

from sketchtune.store import PredictionStore

from .cli import base_parser, load_sweep_config, out_dir, run_main, write_files
from .comparison import Comparison, compare_methods, ensemble_summary, flat_metrics
from .load import EnsembleError, load_oof, read_train_rows
from .methods import METHODS, BestSingle, auto_methods
from .plots import accuracy_bars_png, heatmap_png

__all__ = ["main", "render_outputs"]

PROG = "ensemble_search.optimize"


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


def render_outputs(res: Comparison, summary: dict, names: list[str]) -> dict[str, bytes]:
    """Every output file's bytes, made in memory so nothing is written before all succeeded."""
    corr = pd.DataFrame(res.correlation, index=names, columns=names)
    overlap = pd.DataFrame(res.error_overlap, index=names, columns=names)
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
        "error_overlap.png": heatmap_png(
            res.error_overlap, names, "Fraction of train images both models get wrong",
            fmt=".3f", vmin=0.0),
        "model_acc.png": accuracy_bars_png(names, list(res.candidates["oof_acc"]), ens,
                                           "OOF accuracy: candidates and ensembles"),
    }


def _body(args: argparse.Namespace) -> int:
    cfg = load_sweep_config(args)
    store = PredictionStore(cfg.sweep_dir)
    if not store.candidates_dir.is_dir():
        raise EnsembleError(f"{store.candidates_dir}: no prediction store (has the sweep run?)")
    rows = read_train_rows(cfg.data)
    wanted = [c.strip() for c in args.candidates.split(",") if c.strip()] \
        if args.candidates else None
    if wanted is not None and len(set(wanted)) < len(wanted):
        twice = next(c for c in wanted if wanted.count(c) > 1)
        raise EnsembleError(f"{store.candidates_dir}: --candidates lists {twice} twice")
    oof = load_oof(store, rows, wanted)
    res = compare_methods(oof, cfg.ensemble)
    summary = ensemble_summary(res, oof, cfg.ensemble)
    summary.update(sweep=cfg.name, sweep_dir=str(cfg.sweep_dir), rows_from=str(rows.source))
    files = render_outputs(res, summary, oof.names)
    folder = out_dir(args, cfg)
    paths = write_files(folder, files)

    from .tracking import log_run  # MLflow is imported by the CLIs only

    e = cfg.ensemble
    params = {"method": res.method, "requested_method": e.method, "metric": e.metric,
              "greedy_iterations": e.greedy_iterations, "greedy_sorted_init": e.greedy_sorted_init,
              "greedy_bagging": e.greedy_bagging, "temperature": e.temperature,
              "prune_threshold": e.prune_threshold, "seed": e.seed,
              "candidates": ",".join(oof.candidate_ids), "sweep_dir": str(cfg.sweep_dir)}
    run_id, why = log_run(cfg.tracking_uri, cfg.name, "ensemble-optimize", params,
                          flat_metrics(res), paths)
    if not args.quiet:
        _report(res, oof.names, folder, run_id, why, cfg.tracking_uri)
    elif run_id is None:
        print(f"{PROG}: MLflow not logged ({why}); files written to {folder}")
    return 0


def _report(res: Comparison, names: list[str], folder, run_id, why, uri) -> None:
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
