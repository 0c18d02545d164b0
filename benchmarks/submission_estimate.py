"""Benchmark: the submission estimate against the truth, on synthetic regimes and real sweeps.

    python benchmarks/submission_estimate.py [--seeds 5] [--smoke-test]
        [--sweep SWEEP_DIR TEST_CSV TEST_LABELS_CSV ...]

Synthetic (ensemble_search.synthetic: the truth is known): for each regime and seed,
the realised test accuracy of the submission (argmax of the weighted fold mean) beside
the honest single-fold-model accuracy, the naive ATC and DoC (one temperature fitted on
the OOF rows, applied to the submission's probabilities, as issue #11 tried them), and
`estimate_submission` with its 95 % interval. Real: a finished sweep's ensemble.json,
prediction store and test labels (rows matched by image_path). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ensemble_search.estimate import _Pools, estimate_submission  # noqa: E402
from sketchtune.store import PredictionStore  # noqa: E402
from tests.synthetic_probs import make_fold_probs  # noqa: E402

# name -> make_fold_probs arguments; sizes are the competition's (15,021 train rows,
# 10,014 test rows, 500 classes) in the "real" rows and smaller elsewhere.
REGIMES: dict[str, dict] = {
    "C20 M2 base": dict(classes=20, signal=4.0),
    "C20 M2 strong": dict(classes=20, signal=6.0),
    "C20 M2 weak": dict(classes=20, signal=3.0),
    "C20 M2 little fold noise": dict(classes=20, fold=0.4),
    "C20 M2 much fold noise": dict(classes=20, fold=1.6),
    "C20 M1": dict(classes=20, candidates=1),
    "C20 M6": dict(classes=20, candidates=6),
    "C10 M4 demo-like": dict(classes=10, candidates=4, n=600, n_test=1500, signal=3.5),
    "C20 M2 over-confident": dict(classes=20, under_confidence=0.7),
    "C500 M3 real size": dict(classes=500, candidates=3, n=15000, n_test=10000, signal=8.0,
                              fold=1.5),
    "C500 M3 real size strong": dict(classes=500, candidates=3, n=15000, n_test=10000,
                                     signal=10.0, fold=1.5),
}
SMALL = dict(n=6000, n_test=4000)


def _fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising OOF log loss of softmax(log p / T)."""
    logp = np.log(np.maximum(probs, 1e-12))
    rows = np.arange(len(targets))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=1)[rows, targets].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-4, 4), method="bounded").x))


def naive_atc_doc(oof: np.ndarray, targets: np.ndarray, sub: np.ndarray) -> tuple[float, float]:
    """(ATC, DoC) with max confidence, one temperature fitted on the OOF ensemble rows.

    oof: (N, C) each row's fold ensemble; sub: (n_test, C) the submission's probabilities.
    """
    t = _fit_temperature(oof, targets)
    conf_oof = softmax(np.log(np.maximum(oof, 1e-12)) / t, axis=1).max(axis=1)
    conf_sub = softmax(np.log(np.maximum(sub, 1e-12)) / t, axis=1).max(axis=1)
    acc = float((oof.argmax(axis=1) == targets).mean())
    thr = np.quantile(conf_oof, 1 - acc)  # ATC: the share of OOF rows above it is acc
    return float((conf_sub > thr).mean()), acc + float(conf_sub.mean() - conf_oof.mean())


def _row(name: str, true: float, oof: np.ndarray, targets: np.ndarray, folds: np.ndarray,
         fold_test: np.ndarray, w: np.ndarray, extra: str = "") -> dict:
    wn = w / w.sum()
    oof_ens = np.einsum("m,mnc->nc", wn, oof)
    sub = np.einsum("m,mknc->nc", wn, fold_test) / fold_test.shape[1]
    atc, doc = naive_atc_doc(oof_ens, targets, sub)
    t0 = time.process_time()
    e = estimate_submission(oof, targets, folds, fold_test, w)
    cpu = time.process_time() - t0
    return dict(name=name, true=true, honest=e.honest, atc=atc, doc=doc, est=e.acc, low=e.low,
                high=e.high, inside=e.low <= true <= e.high, sides=(e.pool_low, e.pool_high),
                cpu=cpu, extra=extra)


def synthetic_rows(seeds: int, smoke: bool) -> list[dict]:
    out = []
    for r, (name, kw) in enumerate(REGIMES.items()):
        if smoke and "real size" in name:
            continue
        args = {**SMALL, **kw}
        if smoke:
            args.update(n=min(args["n"], 1500), n_test=min(args["n_test"], 1000))
        for seed in range(100 * r, 100 * r + seeds):  # every row its own random stream
            s = make_fold_probs(seed=seed, **args)
            w = np.ones(s.oof_probs.shape[0])
            true, expected = s.submission_acc(w)
            out.append(_row(f"{name} (seed {seed})", true, s.oof_probs, s.targets, s.folds,
                            s.fold_test_probs, w, extra=f"{expected:.4f}"))
            print(_fmt(out[-1]), flush=True)
    return out


def sides_check(seed: int = 1) -> list[str]:
    """The two sides with the labelled term exact (the expected single-fold accuracy on the
    test rows, from the true posterior): their bias as a share of the true averaging gain."""
    out = ["| regime | true gain | low side | high side | midpoint |", "|---|---|---|---|---|"]
    for name, kw in REGIMES.items():
        if "real size" in name:
            continue
        s = make_fold_probs(seed=seed, **{**SMALL, **kw})
        w = np.ones(s.oof_probs.shape[0]) / s.oof_probs.shape[0]
        pools = _Pools(np.einsum("m,mknc->knc", w.astype(np.float32), s.fold_test_probs))
        rows = np.arange(len(pools.sub_pred))
        single = float(s.test_posterior[rows[None], pools.fold_preds].mean())
        sub = float(s.test_posterior[rows, pools.sub_pred].mean())
        gain = sub - single
        lo, hi = pools.low_side(single) - sub, pools.high_side(single) - sub
        out.append(f"| {name} | {gain:.4f} | {lo:+.4f} ({lo / gain:+.0%}) | {hi:+.4f} "
                   f"({hi / gain:+.0%}) | {(lo + hi) / 2:+.4f} ({(lo + hi) / 2 / gain:+.0%}) |")
    return out


def _load_sweep(store: PredictionStore, ids: list[str], n_test: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(oof (M, N, C), targets, folds, fold_test (M, K, n_test, C)) for complete candidates."""
    k = len(store.folds(ids[0]))
    keys = np.concatenate([store.read_fold(ids[0], f).val_keys.astype(str) for f in range(k)])
    index = pd.Index(keys)
    c = store.read_fold(ids[0], 0).val_probs.shape[1]
    oof = np.empty((len(ids), len(keys), c), dtype=np.float32)
    fold_test = np.empty((len(ids), k, n_test, c), dtype=np.float32)
    targets, folds = np.empty(len(keys), np.int64), np.empty(len(keys), np.int64)
    for m, cid in enumerate(ids):
        for f in range(k):
            fp = store.read_fold(cid, f)
            idx = index.get_indexer(fp.val_keys.astype(str))
            oof[m, idx], targets[idx], folds[idx] = fp.val_probs, fp.val_targets, f
            fold_test[m, f] = fp.test_probs
    return oof, targets, folds, fold_test


def _gain_check(fold_test: np.ndarray, w: np.ndarray, test_targets: np.ndarray) -> str:
    """With test labels: the true averaging gain (submission minus the mean fold ensemble)
    and the two sides given the exact single-fold accuracy, so that the method is seen
    apart from the honest term's sampling noise."""
    wn = (w / w.sum()).astype(np.float32)
    pools = _Pools(np.einsum("m,mknc->knc", wn, fold_test))
    single = float((pools.fold_preds == test_targets[None]).mean())
    gain = float((pools.sub_pred == test_targets).mean()) - single
    return (f"gain {gain:+.4f}, sides {pools.low_side(single) - single:+.4f} / "
            f"{pools.high_side(single) - single:+.4f}")


def sweep_rows(sweep: Path, test_csv: Path, labels_csv: Path) -> list[dict]:
    """A finished sweep: the submission of its ensemble.json, then each complete candidate
    alone (M = 1: the fold averaging is then the whole gain). Test rows match by image_path."""
    spec = json.loads((sweep / "ensemble" / "ensemble.json").read_text())
    store = PredictionStore(sweep)  # it adds candidates/ itself
    test_keys = pd.read_csv(test_csv)["image_path"].astype(str)
    labels = pd.read_csv(labels_csv).set_index("image_path")["target"]
    test_targets = labels.loc[test_keys].to_numpy(np.int64)
    chosen = [c["candidate_id"] for c in spec["candidates"]]
    k = len(store.folds(chosen[0]))
    ids = chosen + sorted(c for c in store.candidates()
                          if c not in chosen and len(store.folds(c)) == k)
    oof, targets, folds, fold_test = _load_sweep(store, ids, len(test_keys))
    w = np.zeros(len(ids))
    w[:len(chosen)] = [float(c["weight"]) for c in spec["candidates"]]
    jobs = [(f"{sweep.name}: submission ({spec['method']}, M={len(chosen)})", w)]
    jobs += [(f"{sweep.name}: candidate {cid[:6]} alone", np.eye(len(ids))[j])
             for j, cid in enumerate(ids)]
    out = []
    for name, wj in jobs:
        keep = np.flatnonzero(wj)
        sub = np.einsum("m,mknc->nc", wj[keep], fold_test[keep]).argmax(axis=1)
        true = float((sub == test_targets).mean())
        out.append(_row(f"{name}, n_test={len(test_keys)}", true, oof[keep], targets, folds,
                        fold_test[keep], wj[keep], extra=_gain_check(
                            fold_test[keep], wj[keep], test_targets)))
    return out


def _fmt(r: dict) -> str:
    lo, hi = r["sides"]
    return (f"| {r['name']} | {r['true']:.4f} | {r['honest']:.4f} ({r['honest'] - r['true']:+.4f})"
            f" | {r['atc']:.4f} | {r['doc']:.4f} | **{r['est']:.4f}** ({r['est'] - r['true']:+.4f})"
            f" | [{r['low']:.4f}, {r['high']:.4f}] | {'yes' if r['inside'] else 'NO'} "
            f"| {lo:.4f} / {hi:.4f} | {r['extra'] or '-'} | {r['cpu']:.1f} |")


HEADER = ("| data | true | honest (bias) | naive ATC | naive DoC | estimate (bias) | 95 % interval"
          " | inside? | sides low / high | expected acc or gain check | CPU s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def _summary(rows: list[dict]) -> str:
    err = np.array([r["est"] - r["true"] for r in rows])
    hon = np.array([r["honest"] - r["true"] for r in rows])
    inside = sum(r["inside"] for r in rows)
    return (f"{len(rows)} rows: estimate bias mean {err.mean():+.4f}, mean |error| "
            f"{np.abs(err).mean():.4f}, max |error| {np.abs(err).max():.4f}; honest bias mean "
            f"{hon.mean():+.4f}; truth inside the interval in {inside}/{len(rows)}.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds per synthetic regime")
    ap.add_argument("--smoke-test", action="store_true", help="small sizes, 1 seed")
    ap.add_argument("--sweep", nargs=3, action="append", default=[],
                    metavar=("SWEEP_DIR", "TEST_CSV", "TEST_LABELS_CSV"))
    ap.add_argument("--sides", action="store_true",
                    help="only the check of the two sides with an exact labelled term")
    args = ap.parse_args(argv)
    if args.sides:
        print("\n".join(sides_check()))
        return 0
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}, {platform.machine()} {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}, python {platform.python_version()}\n")
    print(HEADER)
    real = [r for s, t, lab in args.sweep for r in sweep_rows(Path(s), Path(t), Path(lab))]
    for r in real:
        print(_fmt(r), flush=True)
    rows = synthetic_rows(1 if args.smoke_test else args.seeds, args.smoke_test)
    print()
    if real:
        print("real sweeps: " + _summary(real))
    if rows:
        print("synthetic: " + _summary(rows))
    big = [r for r in rows if "real size" in r["name"]]
    if big:
        print("real size only: " + _summary(big))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
