"""Complete candidates from the prediction store -> aligned arrays (`OOFSet`), validated.

Rows follow the folds file (`image_path,target,fold`, the file every trial reads), or
`train.csv` when there is none; labels always come from `train.csv`, and every stored row's
(image_path, target) must agree with it. A candidate is complete when its folds' validation
rows cover every train row exactly once; incomplete ones are skipped (search-stage trials
have one fold) unless named explicitly. Test predictions are matched to test.csv rows by
image_path, never by position: averaged over each candidate's folds (`load_test_probs`, what
predict needs) or fold by fold (`load_fold_test_probs`, for the submission estimate).
"""

from __future__ import annotations

import logging
import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sketchtune import fs
from sketchtune.config import DataConfig
from sketchtune.errors import EnsembleError, show
from sketchtune.folds import read_folds
from sketchtune.store import PredictionStore
from sketchtune.tables import read_csv, read_test_csv, read_train_csv

__all__ = ["OOFSet", "TrainRows", "check_probs", "display_name", "load_fold_test_probs",
           "load_oof", "load_test_probs", "read_test_keys", "read_train_rows"]

_log = logging.getLogger(__name__)

# Stored probabilities are float32 softmax outputs: rows sum to 1 within ~1e-6.
ROW_SUM_TOL = 1e-3


def _shown(items: list | np.ndarray, n: int = 3) -> str:
    return ", ".join(show(x) for x in list(items)[:n])


def image_key(path: str) -> str:
    """The spelling rows are matched by: './a//b' and 'a/b' are one image."""
    return posixpath.normpath(str(path))


@dataclass(frozen=True)
class TrainRows:
    keys: np.ndarray  # (N,) str image_path, in file order
    targets: np.ndarray  # (N,) int64, train.csv's label of each row
    folds: np.ndarray | None  # (N,) int64, or None without a folds file
    source: Path  # the file the rows follow: the folds file, or train.csv without one
    labels_from: Path  # train.csv, where the targets come from


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


def read_train_rows(data: DataConfig) -> TrainRows:
    """The train rows: the folds file's if it exists, else train.csv's; labels from train.csv.

    Both are read as the sweep reads them (`sketchtune.tables`, `sketchtune.folds`), so rows
    are keyed by the same image_path spelling as the store. train.csv is the truth the
    ensemble is scored against: a folds file whose rows or labels differ from it (train.csv
    edited after the sweep) is refused, naming the first differing image and both labels.
    """
    train_csv = Path(data.train_csv)
    train = read_train_csv(train_csv, data.image_root, check_images=False)
    train_keys, train_targets = train["image_path"].to_numpy(str), train["target"].to_numpy()
    if data.folds_csv is None or not fs.is_file(data.folds_csv):
        return TrainRows(train_keys, train_targets, None, train_csv, train_csv)
    path = data.folds_csv
    df = read_folds(path)
    keys, folds = df["image_path"].to_numpy(str), df["fold"].to_numpy(np.int64)
    labels = pd.Series(train_targets, index=train_keys)
    lost = sorted(set(labels.index) - set(keys))
    extra = [k for k in keys if k not in labels.index]
    if lost or extra:
        first = (f"{show(lost[0])} is in {train_csv} but not in it" if lost
                 else f"{show(extra[0])} is in it but not in {train_csv}")
        raise EnsembleError(f"{path}: the folds file's rows are not train.csv's ({first}); "
                            "train.csv changed after the sweep: restore it, or run the sweep "
                            "again with a new data.folds_csv")
    targets = labels.loc[keys].to_numpy(np.int64)
    stored = df["target"].to_numpy(np.int64)
    if (bad := np.flatnonzero(stored != targets)).size:
        i = bad[0]
        raise EnsembleError(f"{train_csv}: image {show(keys[i])} has target {show(targets[i])} "
                            f"but {path} (the split the sweep trained on) has "
                            f"{show(stored[i])}; {bad.size} row(s) differ: restore train.csv, or "
                            "run the sweep again with a new data.folds_csv")
    return TrainRows(keys, targets, folds, path, train_csv)


def read_test_keys(test_csv: Path, image_root: Path | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """test.csv's image_path column as written and as keyed (`sketchtune.tables`, relative to
    `image_root`, default its folder): two (n_test,) str arrays in file order; no image twice
    and no header-only file (the sweep refuses both too)."""
    raw = read_csv(test_csv, ["image_path"])["image_path"].to_numpy(str)
    keys = read_test_csv(test_csv, image_root or Path(test_csv).parent, check_images=False)
    return raw, keys["image_path"].to_numpy(str)


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


def display_name(manifest: dict, candidate_id: str, short: bool = True) -> str:
    """`<backbone>-<id>`: the backbone without its pretrained tag, the id's first 6 chars and a
    view candidate's suffix (`-hflip`, `-ema-scale`; `short=False`: the whole id)."""
    cfg = manifest.get("config") or {}
    backbone = str((cfg.get("model") or {}).get("name") or manifest.get("backbone") or "model")
    base = str(manifest.get("base_candidate") or candidate_id)
    shown = base[:6] + candidate_id[len(base):] if short and candidate_id.startswith(base) \
        else candidate_id
    return f"{backbone.split('.')[0]}-{shown}"


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
    # Only now: with nothing complete, the error says it once. A search trial that cv did not
    # pick has its search fold only, by design: one line for all of them, not a warning each.
    searched = [c for c in skipped if len(folds := store.folds(c)) == 1
                and store.read_manifest(c, folds[0]).get("stage") == "search"]
    if searched:
        _log.info("%d search trial(s) not sent to cv (one fold each): not ensemble candidates",
                  len(searched))
    for cid, why in skipped.items():
        if cid not in searched:
            _log.warning("skipped: %s", why)
    return complete, skipped


def load_oof(store: PredictionStore, rows: TrainRows,
             candidate_ids: list[str] | None = None) -> OOFSet:
    """Load every complete candidate (or exactly `candidate_ids`, each must be complete).

    Checks: finite probabilities with rows summing to 1, one class count, every stored row's
    target equal to train.csv's, fold assignment agreeing with the folds file (or, without
    one, across candidates), one test row count. Raises EnsembleError naming the candidate,
    fold and file. The test probabilities themselves are read by `load_test_probs`.
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
        if (bad := np.flatnonzero(cand_targets != targets)).size:
            i = bad[0]
            raise EnsembleError(f"{what}: image {show(rows.keys[i])} has target "
                                f"{show(cand_targets[i])} in fold {show(cand_folds[i])}'s "
                                f"predictions but {show(targets[i])} in {rows.labels_from}; "
                                f"{bad.size} row(s) differ: train.csv changed after the sweep "
                                "(restore it, or run the sweep again on the new labels)")
        against = f"{rows.source}" if rows.folds is not None else f"candidate {ref}"
        if folds is not None and (bad := np.flatnonzero(cand_folds != folds)).size:
            raise EnsembleError(f"{what}: fold {show(cand_folds[bad[0]])} holds "
                                f"{show(rows.keys[bad[0]])}, which {against} puts in fold "
                                f"{show(folds[bad[0]])}")
        if ref_n_test is not None and ref_n_test != n_test:
            raise EnsembleError(f"{what}: {n_test} test rows but candidate {ref} has "
                                f"{ref_n_test}")
        folds = cand_folds if folds is None else folds
        ref_n_test = n_test if ref_n_test is None else ref_n_test
        names.append(display_name(fp.manifest, cid))
        ref = ref or cid
    if len(set(names)) < len(names):  # a 6-char id clash: fall back to full ids
        names = [display_name(m, cid, short=False)
                 for m, cid in zip(manifests, ids, strict=True)]
    if (out := (targets < 0) | (targets >= probs.shape[2])).any():
        raise EnsembleError(f"{rows.labels_from}: target {show(targets[out][0])} outside the "
                            f"{probs.shape[2]} classes of the stored predictions")
    return OOFSet(
        probs=probs, targets=targets, folds=folds, keys=rows.keys, candidate_ids=ids,
        names=names, manifests=manifests, skipped=skipped,
    )


def _fold_test_probs(store: PredictionStore, cid: str, k: int, index: pd.Index,
                     raw: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Fold k's test probabilities in `index` order (the requested image_paths, normalised;
    `raw` as test.csv spells them, for messages): (n, C) and the fold's own test keys.

    EnsembleError when the fold recorded no test keys (written before they were) or did
    not predict some of the requested images.
    """
    fp = store.read_fold(cid, k)
    npz = store.candidate_dir(cid) / f"fold{k}.npz"
    check_probs(fp.test_probs, f"{npz} test_probs")
    if fp.test_keys is None:
        raise EnsembleError(
            f"{npz}: written before fold files recorded their test image_paths, so its rows "
            f"cannot be matched to {source} by image_path (only by position, which is how a "
            "reordered or edited test.csv got wrong labels); predict the test images from the "
            f"saved weights: python -m ensemble_search.predict --images {source}, or delete "
            f"{store.candidate_dir(cid)} and run the sweep again")
    stored = pd.Index([image_key(x) for x in fp.test_keys])
    if not stored.is_unique:
        raise EnsembleError(f"{npz}: test_keys list "
                            f"{show(stored[stored.duplicated()][0])} more than once")
    at = stored.get_indexer(index)
    if (missing := np.flatnonzero(at < 0)).size:
        made = fp.manifest.get("test_csv") or "another test.csv"
        raise EnsembleError(
            f"{source}: {missing.size} of {len(index)} rows have no stored prediction "
            f"(first: {_shown(raw[missing])}; the sweep predicted {made}); predict new "
            f"images from the saved weights: python -m ensemble_search.predict --images "
            f"{source}")
    return fp.test_probs[at], fp.test_keys


def _candidate_fold_test(store: PredictionStore, cid: str, index: pd.Index | None,
                         raw: np.ndarray | None, source: str | Path | None,
                         n_folds: dict[str, int] | None
                         ) -> tuple[list[int], list[np.ndarray], pd.Index, np.ndarray | None]:
    """Candidate `cid`'s fold ids and each fold's (n, C) test probabilities in `index` order.

    `index`/`raw` None: the first fold's own order, returned for the next candidate. Every
    fold 0..n_folds-1 must be present and have predicted the same test images.
    """
    have = store.folds(cid)
    if not have:
        raise EnsembleError(f"{store.candidate_dir(cid)}: candidate {cid} is not in the store")
    want = (n_folds or {}).get(cid) or store.read_manifest(cid, have[0]).get("n_folds")
    missing = sorted(set(range(int(want or len(have)))) - set(have))
    if missing:
        raise EnsembleError(f"{store.candidate_dir(cid)}: candidate {cid} is missing "
                            f"fold(s) {missing}; run the sweep again to finish them")
    # A fold beyond the manifest's n_folds (left by a sweep with more folds) would be averaged
    # in as one more fold model, although its rows are another split's. (With `n_folds` given,
    # load_fold_test_probs compares the folds with the OOF rows' itself.)
    if not (n_folds or {}).get(cid) and (
            extra := [k for k in have if k >= int(want or len(have))]):
        raise EnsembleError(f"{store.candidate_dir(cid)}: candidate {cid} has fold(s) {extra} "
                            f"beyond its {int(want or len(have))} folds (left by another "
                            "split); delete them, or the candidate, and run the sweep again")
    if index is None:  # no test.csv given: the order the first fold predicted
        raw = store.read_fold(cid, have[0]).test_keys
        index = pd.Index([image_key(x) for x in raw]) if raw is not None else None
    where = str(source or "test.csv")
    per_fold: list[np.ndarray] = []
    ref_keys = None
    for k in have:
        probs, keys = _fold_test_probs(store, cid, k, index, raw, where)
        if ref_keys is None:
            ref_keys = set(keys.tolist())
        elif set(keys.tolist()) != ref_keys:
            raise EnsembleError(
                f"{store.candidate_dir(cid) / f'fold{k}.npz'}: predicted other test images "
                f"than fold {have[0]} of candidate {cid} (test_keys differ); its folds come "
                "from different test.csv files: delete the stale fold and run the sweep "
                "again")
        if per_fold and probs.shape[1] != per_fold[0].shape[1]:
            raise EnsembleError(f"{store.candidate_dir(cid) / f'fold{k}.npz'}: "
                                f"{probs.shape[1]} classes, fold {have[0]} has "
                                f"{per_fold[0].shape[1]}")
        per_fold.append(probs)
    return have, per_fold, index, raw


def load_test_probs(store: PredictionStore, candidate_ids: list[str],
                    test_keys: np.ndarray | list[str] | None = None, *,
                    source: str | Path | None = None,
                    n_folds: dict[str, int] | None = None) -> np.ndarray:
    """(M, n_test, C) float32: each candidate's test probabilities averaged over its folds.

    Rows follow `test_keys` (test.csv's image_path column, matched by image_path, never by
    position; default: the first fold's own list). Every fold 0..n_folds-1 (from the
    manifest, or `n_folds`) must be present and have predicted the same test images; every
    requested image must have a prediction. `source` names the test.csv in messages.
    """
    out: list[np.ndarray] = []
    raw = None if test_keys is None else np.asarray(test_keys, dtype=str)
    index = None if raw is None else pd.Index([image_key(x) for x in raw])
    for cid in candidate_ids:
        _, per_fold, index, raw = _candidate_fold_test(store, cid, index, raw, source, n_folds)
        total = np.sum(per_fold, axis=0, dtype=np.float64)
        if out and total.shape != out[0].shape:
            raise EnsembleError(f"{store.candidate_dir(cid)}: test probabilities {total.shape} "
                                f"but candidate {candidate_ids[0]} has {out[0].shape}")
        out.append((total / len(per_fold)).astype(np.float32))
    return np.stack(out)


def load_fold_test_probs(store: PredictionStore, candidate_ids: list[str],
                         test_keys: np.ndarray | list[str], *, source: str | Path | None = None,
                         n_folds: int) -> np.ndarray:
    """(M, K, n_test, C) float32: each candidate's K fold models' test probabilities, unaveraged.

    What the submission estimate needs (`estimate.estimate_submission`): fold k of every
    candidate at [:, k], rows in `test_keys` order, matched by image_path with the same
    checks as `load_test_probs`. Every candidate must have exactly folds 0..n_folds-1, the
    folds of the OOF rows. About n_test x C x 4 bytes per fold: load only the candidates
    the submission uses (100 MB each at the competition's 10,014 x 500, K = 5).
    """
    raw = np.asarray(test_keys, dtype=str)
    index = pd.Index([image_key(x) for x in raw])
    out: np.ndarray | None = None
    for j, cid in enumerate(candidate_ids):
        have, per_fold, _, _ = _candidate_fold_test(store, cid, index, raw, source,
                                                    {cid: n_folds})
        if have != list(range(n_folds)):
            raise EnsembleError(f"{store.candidate_dir(cid)}: candidate {cid} has folds {have} "
                                f"but the OOF rows have folds 0..{n_folds - 1}")
        if out is None:  # filled in place: no second (M, K, n_test, C) copy from a stack
            out = np.empty((len(candidate_ids), n_folds, *per_fold[0].shape), dtype=np.float32)
        if per_fold[0].shape != out.shape[2:]:
            raise EnsembleError(f"{store.candidate_dir(cid)}: test probabilities "
                                f"{per_fold[0].shape} but candidate {candidate_ids[0]} has "
                                f"{out.shape[2:]}")
        out[j] = per_fold
    if out is None:
        raise EnsembleError("no candidate given to load test probabilities for")
    return out
