"""`python -m ensemble_search.predict`: ensemble.json + test probabilities -> submission.

Each chosen candidate's test probability is the mean over its fold models (from the
prediction store); the ensemble is their weighted average, then the temperature. Writes
`submission.csv` (ID,image_path,target in test.csv order) and `test_probs.npy` (float32
(n_test, C)) under `<sweep>/ensemble/` (or --out), and logs the run `ensemble-predict`.
With --images CSV it predicts that CSV's images with the saved checkpoints instead.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from sketchtune.config import SweepConfig
from sketchtune.store import PredictionStore

from .cli import base_parser, load_sweep_config, out_dir, run_main, write_files
from .load import EnsembleError, check_probs, load_test_probs, read_test_keys
from .methods import apply_temperature
from .metrics import weighted_probs

__all__ = ["ensemble_predict", "main", "read_ensemble"]

PROG = "ensemble_search.predict"


def read_ensemble(path: Path) -> dict:
    """ensemble.json, checked: candidates with non-negative weights summing to 1."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EnsembleError(f"{path}: ensemble file not found (run ensemble_search.optimize)") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EnsembleError(f"{path}: not valid JSON ({err})") from None
    cands = spec.get("candidates") if isinstance(spec, dict) else None
    if not cands or not all(isinstance(c, dict) and "candidate_id" in c and "weight" in c
                            for c in cands):
        raise EnsembleError(f"{path}: needs a non-empty 'candidates' list of "
                            f"{{candidate_id, weight}}")
    w = np.array([float(c["weight"]) for c in cands])
    if (w < 0).any() or abs(w.sum() - 1.0) > 1e-6:
        raise EnsembleError(f"{path}: weights must be non-negative and sum to 1 (sum {w.sum()})")
    t = spec.get("temperature") or 1.0
    if not float(t) > 0:
        raise EnsembleError(f"{path}: temperature must be positive but got {t}")
    return spec


def ensemble_predict(probs: np.ndarray, spec: dict) -> np.ndarray:
    """probs: (M, n, C) in spec's candidate order -> (n, C) float32 ensemble probabilities."""
    w = np.array([float(c["weight"]) for c in spec["candidates"]])
    out = apply_temperature(weighted_probs(probs, w), float(spec.get("temperature") or 1.0))
    return out.astype(np.float32)


def _check_candidates(store: PredictionStore, spec: dict, path: Path) -> list[str]:
    have = set(store.candidates())
    ids = [str(c["candidate_id"]) for c in spec["candidates"]]
    for cid in ids:
        if cid not in have:
            raise EnsembleError(f"{path}: names candidate {cid}, which is not in the store "
                                f"{store.candidates_dir}; run ensemble_search.optimize again")
    return ids


def _images_probs(cfg: SweepConfig, ids: list[str], csv: Path) -> np.ndarray:
    # Imported here: torch and timm, which only --images needs.
    from sketchtune.data import DataError
    from sketchtune.model import ModelError
    from sketchtune.predict import predict_csv

    try:
        out = [np.asarray(predict_csv(cfg, cid, csv), dtype=np.float32) for cid in ids]
    except (DataError, ModelError) as err:  # a bad image or weights file: already one line
        raise EnsembleError(str(err)) from None
    for cid, p in zip(ids, out, strict=True):
        check_probs(p, f"{csv}: predictions of candidate {cid}")
    return np.stack(out)


def _body(args: argparse.Namespace) -> int:
    cfg = load_sweep_config(args)
    path = Path(args.ensemble) if args.ensemble else cfg.sweep_dir / "ensemble" / "ensemble.json"
    spec = read_ensemble(path)
    store = PredictionStore(cfg.sweep_dir)
    ids = _check_candidates(store, spec, path)
    if args.images:
        csv = Path(args.images).resolve()
        keys = read_test_keys(csv)
        probs = _images_probs(cfg, ids, csv)
        stem = f"predictions_{csv.stem}"
    else:
        csv = Path(args.test_csv).resolve() if args.test_csv else Path(cfg.data.test_csv)
        keys = read_test_keys(csv)
        probs = load_test_probs(store, ids)
        stem = "submission"
    if probs.shape[1] != len(keys):
        raise EnsembleError(f"{csv}: {len(keys)} rows, but the predictions of candidate "
                            f"{ids[0]} have {probs.shape[1]}; pass the test.csv the sweep "
                            "predicted (--test-csv)")
    c = spec.get("num_classes")
    if c is not None and probs.shape[2] != int(c):
        raise EnsembleError(f"{path}: {c} classes, but the stored predictions have "
                            f"{probs.shape[2]}")
    ens = ensemble_predict(probs, spec)
    sub = pd.DataFrame({"ID": np.arange(len(keys)), "image_path": keys,
                        "target": ens.argmax(axis=1)})
    npy = io.BytesIO()
    np.save(npy, ens)
    probs_name = "test_probs.npy" if stem == "submission" else f"{stem}.npy"
    folder = out_dir(args, cfg)
    paths = write_files(folder, {f"{stem}.csv": sub.to_csv(index=False).encode(),
                                 probs_name: npy.getvalue()})

    from .tracking import log_run  # MLflow is imported by the CLIs only

    params = {"method": spec.get("method"), "ensemble": str(path), "csv": str(csv),
              "candidates": ",".join(ids), "temperature": spec.get("temperature") or 1.0,
              "source": "checkpoints" if args.images else "store"}
    run_id, why = log_run(cfg.tracking_uri, cfg.name, "ensemble-predict", params,
                          {"n_rows": float(len(keys))}, paths)
    if not args.quiet:
        print(f"{len(keys)} rows from {csv}; {len(ids)} candidates ({spec.get('method')})")
        print(f"wrote {paths[0]} and {paths[1]}")
        print(f"MLflow: run {run_id} in {cfg.tracking_uri}" if run_id
              else f"MLflow: NOT logged ({why})")
    elif run_id is None:
        print(f"{PROG}: MLflow not logged ({why}); files written to {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = base_parser(PROG, "Write the submission from ensemble.json and the stored test "
                          "predictions.")
    p.add_argument("--ensemble", metavar="PATH", default=None,
                   help="ensemble.json (default: <sweep folder>/ensemble/ensemble.json)")
    p.add_argument("--test-csv", metavar="CSV", default=None,
                   help="test.csv whose rows the submission follows (default: data.test_csv)")
    p.add_argument("--images", metavar="CSV", default=None,
                   help="predict this CSV of images (column image_path) with the saved "
                        "checkpoints instead of the stored test predictions")
    return run_main(PROG, _body, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
