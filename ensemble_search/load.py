"""Complete candidates from the prediction store -> aligned arrays (`OOFSet`), validated.

Rows follow the folds file (`image_path,target,fold`, the file every trial reads), or
`train.csv` when there is none. A candidate is complete when its folds' validation rows
cover every train row exactly once; incomplete ones are skipped (search-stage trials
have one fold) unless named explicitly.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sketchtune.config import DataConfig
from sketchtune.errors import first_line
from sketchtune.store import PredictionStore

__all__ = [
    "EnsembleError",
    "OOFSet",
    "TrainRows",
    "check_probs",
    "display_name",
    "load_oof",
    "load_test_probs",
    "read_test_keys",
    "read_train_rows",
]

_log = logging.getLogger(__name__)

# Stored probabilities are float32 softmax outputs: rows sum to 1 within ~1e-6.
ROW_SUM_TOL = 1e-3


class EnsembleError(ValueError):
    """Bad input to the ensemble search; the message is one line naming the file."""


@dataclass(frozen=True)
class TrainRows:
    keys: np.ndarray  # (N,) str image_path, in file order
    targets: np.ndarray | None  # (N,) int64, or None when the file has no target column
    folds: np.ndarray | None  # (N,) int64, or None without a folds file
    source: Path


@dataclass
class OOFSet:
    """Every complete candidate's OOF probabilities on the same rows, in the same order."""

    probs: np.ndarray  # (M, N, C) float32
    targets: np.ndarray  # (N,) int64
    folds: np.ndarray  # (N,) int64, the fold whose model predicted each row
    keys: np.ndarray  # (N,) str image_path
    candidate_ids: list[str]  # (M,)
    names: list[str]  # (M,) display names <backbone>-<id>
    manifests: list[dict] = field(default_factory=list)  # (M,) fold-0 manifest of each
    skipped: dict[str, str] = field(default_factory=dict)  # incomplete id -> why

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[2])


def _read_csv(path: Path, need: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise EnsembleError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise EnsembleError(f"{path}: not a readable CSV ({first_line(err)})") from None
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise EnsembleError(f"{path}: missing column(s) {missing} (has {list(df.columns)})")
    return df


def read_train_rows(data: DataConfig) -> TrainRows:
    """The train rows: the folds file if it exists, else train.csv's image_path column."""
    if data.folds_csv is not None and Path(data.folds_csv).is_file():
        path, df = Path(data.folds_csv), _read_csv(Path(data.folds_csv),
                                                   ("image_path", "target", "fold"))
    else:
        path = Path(data.train_csv)
        df = _read_csv(path, ("image_path",))
    keys = df["image_path"].astype(str).to_numpy()
    dup = pd.Index(keys).duplicated()
    if dup.any():
        raise EnsembleError(f"{path}: image_path {keys[dup][0]!r} appears more than once")
    targets = df["target"].to_numpy(np.int64) if "target" in df.columns else None
    folds = df["fold"].to_numpy(np.int64) if "fold" in df.columns else None
    return TrainRows(keys, targets, folds, path)


def read_test_keys(test_csv: Path) -> np.ndarray:
    """test.csv's image_path column, (n_test,) str, in file order."""
    return _read_csv(Path(test_csv), ("image_path",))["image_path"].astype(str).to_numpy()


def check_probs(p: np.ndarray, what: str) -> None:
    """Raise EnsembleError unless p (n, C) is finite, non-negative and rows sum to 1."""
    if not np.isfinite(p).all():
        bad = int(np.flatnonzero(~np.isfinite(p).all(axis=1))[0])
        raise EnsembleError(f"{what}: NaN or infinite probability (row {bad})")
    if (p < 0).any():
        raise EnsembleError(f"{what}: negative probability (row {int(np.argwhere(p < 0)[0, 0])})")
    dev = np.abs(p.sum(axis=1, dtype=np.float64) - 1.0)
    if (dev > ROW_SUM_TOL).any():
        bad = int(np.argmax(dev))
        raise EnsembleError(f"{what}: row {bad} sums to {1.0 + dev[bad]:.4g}, not 1 "
                            f"(tolerance {ROW_SUM_TOL})")


def display_name(manifest: dict, candidate_id: str) -> str:
    """`<backbone>-<id>`: the backbone without its pretrained tag, the id's first 6 chars."""
    cfg = manifest.get("config") or {}
    backbone = str((cfg.get("model") or {}).get("name") or manifest.get("backbone") or "model")
    return f"{backbone.split('.')[0]}-{candidate_id[:6]}"


def _completeness(store: PredictionStore, cid: str, keys: np.ndarray) -> tuple[bool, str]:
    try:
        return store.completeness(cid, keys.tolist())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise EnsembleError(f"{store.candidate_dir(cid)}: unreadable fold file ({err})") from None


def _complete_ids(store: PredictionStore, keys: np.ndarray,
                  wanted: list[str] | None) -> tuple[list[str], dict[str, str]]:
    have = store.candidates()
    ids = wanted if wanted is not None else have
    complete, skipped = [], {}
    for cid in ids:
        if cid not in have:
            raise EnsembleError(f"{store.candidate_dir(cid)}: candidate {cid} is not in the store")
        ok, why = _completeness(store, cid, keys)
        if ok:
            complete.append(cid)
        elif wanted is not None:
            raise EnsembleError(f"{store.candidate_dir(cid)}: {why}")
        else:
            skipped[cid] = why
    if not complete:
        detail = f"; {len(skipped)} incomplete, e.g. {next(iter(skipped.values()))}" if skipped \
            else ""
        raise EnsembleError(f"{store.candidates_dir}: no complete candidate{detail}; run the "
                            "sweep again to finish their folds (it resumes)")
    for why in skipped.values():  # only now: with nothing complete, the error says it once
        _log.warning("skipped: %s", why)
    return complete, skipped


def load_oof(store: PredictionStore, rows: TrainRows,
             candidate_ids: list[str] | None = None) -> OOFSet:
    """Load every complete candidate (or exactly `candidate_ids`, each must be complete).

    Checks: finite probabilities with rows summing to 1, one class count, targets and fold
    assignment agreeing with the folds file (or, without one, across candidates), one
    test row count. Raises EnsembleError naming the candidate, fold and file. The test
    probabilities themselves are read by `load_test_probs`.
    """
    ids, skipped = _complete_ids(store, rows.keys, candidate_ids)
    index = pd.Index(rows.keys)
    n = len(rows.keys)
    targets, folds = rows.targets, rows.folds
    probs: np.ndarray | None = None
    ref_n_test: int | None = None  # the first candidate's test row count
    manifests, names, ref = [], [], None  # ref: the candidate the others are compared with
    first_fold = ""  # the first fold file read: its class count is the one all must have
    for j, cid in enumerate(ids):
        cand_folds = np.full(n, -1, dtype=np.int64)
        cand_targets = np.full(n, -1, dtype=np.int64)
        n_test = None
        for k in store.folds(cid):
            fp = store.read_fold(cid, k)
            where = f"{store.candidate_dir(cid) / f'fold{k}.npz'}"
            c = fp.val_probs.shape[1]
            if probs is None:
                probs = np.empty((len(ids), n, c), dtype=np.float32)
                first_fold = where
            if c != probs.shape[2]:
                raise EnsembleError(f"{where}: val_probs has {c} classes but {first_fold} has "
                                    f"{probs.shape[2]}")
            if fp.test_probs.shape[1] != c:
                raise EnsembleError(f"{where}: test_probs has {fp.test_probs.shape[1]} classes "
                                    f"but val_probs has {c}")
            check_probs(fp.val_probs, f"{where} val_probs")
            idx = index.get_indexer(fp.val_keys.astype(str))
            probs[j, idx] = fp.val_probs
            cand_folds[idx] = k
            cand_targets[idx] = fp.val_targets
            n_test = n_test if n_test is not None else len(fp.test_probs)
            if len(fp.test_probs) != n_test:
                raise EnsembleError(f"{where}: {len(fp.test_probs)} test rows, fold "
                                    f"{store.folds(cid)[0]} has {n_test}")
            if k == store.folds(cid)[0]:
                manifests.append(fp.manifest)
        what = f"{store.candidate_dir(cid)}: candidate {cid}"
        against = f"{rows.source}" if rows.targets is not None else f"candidate {ref}"
        if targets is not None and (bad := np.flatnonzero(cand_targets != targets)).size:
            raise EnsembleError(f"{what}: {bad.size} target(s) differ from {against} "
                                f"(first: {rows.keys[bad[0]]!r})")
        against = f"{rows.source}" if rows.folds is not None else f"candidate {ref}"
        if folds is not None and (bad := np.flatnonzero(cand_folds != folds)).size:
            raise EnsembleError(f"{what}: fold {cand_folds[bad[0]]} holds {rows.keys[bad[0]]!r}, "
                                f"which {against} puts in fold {folds[bad[0]]}")
        if ref_n_test is not None and ref_n_test != n_test:
            raise EnsembleError(f"{what}: {n_test} test rows but candidate {ref} has "
                                f"{ref_n_test}")
        targets = cand_targets if targets is None else targets
        folds = cand_folds if folds is None else folds
        ref_n_test = n_test if ref_n_test is None else ref_n_test
        names.append(display_name(fp.manifest, cid))
        ref = ref or cid
    if len(set(names)) < len(names):  # a 6-char id clash: fall back to full ids
        names = [f"{nm.rsplit('-', 1)[0]}-{cid}" for nm, cid in zip(names, ids, strict=True)]
    if targets.min() < 0 or targets.max() >= probs.shape[2]:
        raise EnsembleError(f"{rows.source}: target {int(targets.max())} outside the "
                            f"{probs.shape[2]} classes of the stored predictions")
    return OOFSet(
        probs=probs, targets=targets, folds=folds, keys=rows.keys, candidate_ids=ids,
        names=names, manifests=manifests, skipped=skipped,
    )


def load_test_probs(store: PredictionStore, candidate_ids: list[str],
                    n_folds: dict[str, int] | None = None) -> np.ndarray:
    """(M, n_test, C) float32: each candidate's test probabilities averaged over its folds.

    Every fold 0..n_folds-1 (from the manifest, or `n_folds`) must be present.
    """
    out: list[np.ndarray] = []
    for cid in candidate_ids:
        have = store.folds(cid)
        if not have:
            raise EnsembleError(f"{store.candidate_dir(cid)}: candidate {cid} is not in the store")
        want = (n_folds or {}).get(cid) or store.read_manifest(cid, have[0]).get("n_folds")
        missing = sorted(set(range(int(want or len(have)))) - set(have))
        if missing:
            raise EnsembleError(f"{store.candidate_dir(cid)}: candidate {cid} is missing "
                                f"fold(s) {missing}; run the sweep again to finish them")
        total = None
        for k in have:
            fp = store.read_fold(cid, k)
            where = f"{store.candidate_dir(cid) / f'fold{k}.npz'} test_probs"
            check_probs(fp.test_probs, where)
            if total is not None and fp.test_probs.shape != total.shape:
                raise EnsembleError(f"{where}: shape {fp.test_probs.shape}, fold {have[0]} has "
                                    f"{total.shape}")
            total = fp.test_probs.astype(np.float64) if total is None else total + fp.test_probs
        if out and total.shape != out[0].shape:
            raise EnsembleError(f"{store.candidate_dir(cid)}: test probabilities {total.shape} "
                                f"but candidate {candidate_ids[0]} has {out[0].shape}")
        out.append((total / len(have)).astype(np.float32))
    return np.stack(out)
