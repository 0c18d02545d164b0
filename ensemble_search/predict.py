"""`python -m ensemble_search.predict`: ensemble.json + test probabilities -> submission.

Each chosen candidate's test probability is the mean over its fold models (from the
prediction store), matched to test.csv's rows by image_path (never by position: every fold
records the test images it predicted); the ensemble is their weighted average (each
calibrated first by its own temperature, if ensemble.json gives one), then the temperature.
Writes `submission.csv` (ID,image_path,target in test.csv order) and `test_probs.npy` (float32
(n_test, C)) under `<sweep>/ensemble/` (or --out), and logs the run `ensemble-predict`.
With --images CSV it predicts that CSV's images with the saved fold weights instead
(relative paths under --image-root, default the CSV's folder; absolute paths as they are).
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from sketchtune.cli import location_arg, resolve_arg
from sketchtune.config import SweepConfig
from sketchtune.errors import EnsembleError
from sketchtune.store import PredictionStore

from .cli import base_parser, load_sweep_config, out_dir, run_main, write_files
from .load import check_probs, load_test_probs, read_test_keys
from .methods import apply_temperature
from .metrics import weighted_probs
from .spec import EnsembleSpec, read_ensemble

__all__ = ["ensemble_predict", "main", "read_ensemble"]

PROG = "ensemble_search.predict"

_log = logging.getLogger(__name__)


def ensemble_predict(probs: np.ndarray, spec: EnsembleSpec) -> np.ndarray:
    """probs: (M, n, C) in spec's candidate order -> (n, C) float32 ensemble probabilities."""
    out = apply_temperature(weighted_probs(probs, spec.weights, temperatures=spec.temperatures),
                            spec.temperature)
    return out.astype(np.float32)


def _check_candidates(store: PredictionStore, spec: EnsembleSpec, path: Path) -> list[str]:
    have = set(store.candidates())
    for i, cid in enumerate(spec.ids):
        if cid not in have:
            raise EnsembleError(f"{path}: candidates[{i}].candidate_id: {cid!r} is not in the "
                                f"store {store.candidates_dir}; run ensemble_search.optimize "
                                "again")
    return spec.ids


def _images_probs(cfg: SweepConfig, ids: list[str], csv: Path, root: Path) -> np.ndarray:
    # Imported here: torch and timm, which only --images needs. Their DataError and
    # ModelError (a bad image or weights file) are user errors (see cli.run_main).
    from sketchtune.predict import predict_csv

    out = [np.asarray(predict_csv(cfg, cid, csv, image_root=root), dtype=np.float32)
           for cid in ids]
    for cid, p in zip(ids, out, strict=True):
        check_probs(p, f"{csv}: predictions of candidate {cid}")
    return np.stack(out)


def _body(args: argparse.Namespace) -> int:
    cfg = load_sweep_config(args)
    path = (location_arg(args.ensemble, "--ensemble") if args.ensemble
            else cfg.sweep_dir / "ensemble" / "ensemble.json")
    spec = read_ensemble(path)
    store = PredictionStore(cfg.sweep_dir)
    ids = _check_candidates(store, spec, path)
    if args.images:
        csv = resolve_arg(args.images, "--images")
        root = resolve_arg(args.image_root, "--image-root") if args.image_root else csv.parent
        raw, keys = read_test_keys(csv, root)
        probs = _images_probs(cfg, ids, csv, root)
        stem = f"predictions_{csv.stem}"
    else:
        if args.image_root:
            raise EnsembleError("--image-root: only used with --images (the stored test "
                                "predictions need no images)")
        csv = (resolve_arg(args.test_csv, "--test-csv") if args.test_csv
               else Path(cfg.data.test_csv))
        raw, keys = read_test_keys(csv, cfg.data.test_image_root)
        # Matched by image_path: a reordered or edited test.csv gets each image's own row.
        probs = load_test_probs(store, ids, keys, source=csv)
        n_stored = store.read_manifest(ids[0], store.folds(ids[0])[0]).get("n_test")
        if isinstance(n_stored, int) and len(raw) < n_stored:
            _log.warning("%s has %d rows, the sweep predicted %d test images: the submission "
                         "has %s's rows only", csv, len(raw), n_stored, csv.name)
        stem = "submission"
    c = spec.num_classes
    if c is not None and probs.shape[2] != c:
        raise EnsembleError(f"{path}: num_classes: {c}, but the stored predictions have "
                            f"{probs.shape[2]} classes")
    ens = ensemble_predict(probs, spec)
    sub = pd.DataFrame({"ID": np.arange(len(raw)), "image_path": raw,
                        "target": ens.argmax(axis=1)})
    npy = io.BytesIO()
    np.save(npy, ens)
    probs_name = "test_probs.npy" if stem == "submission" else f"{stem}.npy"
    folder = out_dir(args, cfg)
    paths = write_files(folder, {f"{stem}.csv": sub.to_csv(index=False).encode(),
                                 probs_name: npy.getvalue()})

    from .tracking import log_run  # MLflow is imported by the CLIs only

    params = {"method": spec.method, "ensemble": str(path), "csv": str(csv),
              "candidates": ",".join(ids), "temperature": spec.temperature,
              "source": "checkpoints" if args.images else "store"}
    run_id, why = log_run(cfg.tracking_uri, cfg.name, "ensemble-predict", params,
                          {"n_rows": float(len(keys))}, paths)
    if not args.quiet:
        print(f"{len(keys)} rows from {csv}; {len(ids)} candidates ({spec.method})")
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
                   help="predict this CSV of images (column image_path) with the saved fold "
                        "weights instead of the stored test predictions; writes "
                        "predictions_<name>.csv")
    p.add_argument("--image-root", metavar="DIR", default=None,
                   help="with --images: the folder relative image_paths are read under "
                        "(default: the CSV's own folder); absolute paths are read as they are")
    return run_main(PROG, _body, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
