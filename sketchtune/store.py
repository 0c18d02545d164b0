"""The prediction store: per (candidate, fold) OOF and test probabilities plus a manifest.

Layout under a sweep's folder::

    <sweep_dir>/candidates/<candidate_id>/fold<k>.npz    val_keys (n_val,) str, val_targets (n_val,)
                                                        int64, val_probs (n_val, C) float32,
                                                        test_keys (n_test,) str, test_probs
                                                        (n_test, C) float32
    <sweep_dir>/candidates/<candidate_id>/fold<k>.json   manifest (written last: its presence
                                                        means the fold is complete)

`test_keys` is the ordered image_path list the fold predicted (the manifest adds its digest
`test_keys_sha256` and the `test_csv` it came from), so test rows are matched to images by
image_path, never by position. Fold files written before it existed have no `test_keys`
(`FoldPrediction.test_keys` is None); readers that need it refuse them.

A fold trained by a Ray trial names where it ran: the manifest's `node_id` (the Ray node's
hex id; several nodes can share one machine and IP) and `node_ip`, those of the attempt that
wrote it. Folds written before they were recorded, or by `sketchtune.train` outside Ray, have
neither; read them with `manifest.get`.

Every file is written to a temporary name in the same folder and renamed into place, so a
crash or a full disk never leaves a file that a later run would trust. Files get the mode a
plain `open()` would give (0666 less the umask), so teammates sharing the store can read it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FoldPrediction", "PredictionStore", "StoreError", "atomic_write_bytes", "keys_digest",
           "open_new_file"]

_FOLD_PREFIX = "fold"


class StoreError(ValueError):
    """The store is missing something or holds something inconsistent; one-line message."""


@dataclass(frozen=True)
class FoldPrediction:
    manifest: dict[str, Any]
    val_keys: np.ndarray  # (n_val,) str: image_path of the fold's validation rows
    val_targets: np.ndarray  # (n_val,) int64
    val_probs: np.ndarray  # (n_val, C) float32
    test_probs: np.ndarray  # (n_test, C) float32, in test_keys order
    test_keys: np.ndarray | None  # (n_test,) str image_path; None in a fold written before them


def keys_digest(keys: Sequence[str] | np.ndarray) -> str:
    """sha256 of an ordered image_path list: names the exact test list a fold predicted."""
    # JSON of the list: unambiguous whatever characters a path holds.
    return hashlib.sha256(json.dumps([str(k) for k in keys]).encode()).hexdigest()


def open_new_file(folder: Path, prefix: str) -> tuple[int, Path]:
    """A new, uniquely named file in `folder`, opened for writing: (fd, path).

    Unlike `tempfile.mkstemp` (always 0600) it is created with 0666 less the umask, the
    mode a plain `open()` gives, so a team sharing the folder can read what lands there.
    """
    while True:
        path = folder / f"{prefix}{secrets.token_hex(6)}.tmp"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:  # a clash of 48 random bits: draw again
            continue


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (POSIX-atomic).

    A full disk or a read-only folder is a StoreError naming the path; the temporary file
    is removed, so no half-written file is ever left where a later run would trust it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = open_new_file(path.parent, f".{path.name}.")
    except OSError as err:
        raise StoreError(f"{path}: cannot write ({err.strerror or err}); make the folder "
                         "writable or point storage_path elsewhere") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise StoreError(f"{path}: cannot write ({err.strerror or err}); free some space or "
                         "make it writable, then run again: nothing was half-written") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(path, text.encode())


class PredictionStore:
    """Reads and writes one sweep's predictions. `root` is the sweep folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    @property
    def candidates_dir(self) -> Path:
        return self.root / "candidates"

    def candidate_dir(self, candidate_id: str) -> Path:
        return self.candidates_dir / candidate_id

    def _paths(self, candidate_id: str, fold: int) -> tuple[Path, Path]:
        d = self.candidate_dir(candidate_id)
        return d / f"{_FOLD_PREFIX}{fold}.npz", d / f"{_FOLD_PREFIX}{fold}.json"

    # ------------------------------------------------------------------ write
    def write_fold(
        self,
        candidate_id: str,
        fold: int,
        *,
        val_keys: Iterable[str],
        val_targets: np.ndarray,
        val_probs: np.ndarray,
        test_keys: Iterable[str],
        test_probs: np.ndarray,
        manifest: dict[str, Any],
    ) -> Path:
        """Store one fold. The arrays go first, the manifest last, each atomically.

        test_keys: the image_path of each test_probs row, in that order (test.csv's).
        """
        val_keys = np.asarray(list(val_keys), dtype=str)
        test_keys = np.asarray(list(test_keys), dtype=str)
        val_probs = np.asarray(val_probs, dtype=np.float32)
        test_probs = np.asarray(test_probs, dtype=np.float32)
        val_targets = np.asarray(val_targets, dtype=np.int64)
        assert val_probs.ndim == 2 and test_probs.ndim == 2, "probabilities must be (N, C)"
        assert val_probs.shape[1] == test_probs.shape[1], "val and test class counts differ"
        assert len(val_keys) == len(val_probs) == len(val_targets), "val rows disagree"
        assert len(test_keys) == len(test_probs), "test rows disagree"
        npz, js = self._paths(candidate_id, fold)
        buf = io.BytesIO()
        np.savez(
            buf, val_keys=val_keys, val_targets=val_targets, val_probs=val_probs,
            test_keys=test_keys, test_probs=test_probs,
        )
        atomic_write_bytes(npz, buf.getvalue())
        full = {
            **manifest,
            "candidate_id": candidate_id,
            "fold": int(fold),
            "num_classes": int(val_probs.shape[1]),
            "n_val": int(len(val_keys)),
            "n_test": int(len(test_probs)),
            "test_keys_sha256": keys_digest(test_keys),
        }
        atomic_write_json(js, full)
        return js

    # ------------------------------------------------------------------ read
    def candidates(self) -> list[str]:
        """Candidate ids that have at least one finished fold, sorted."""
        if not self.candidates_dir.is_dir():
            return []
        return sorted(
            d.name for d in self.candidates_dir.iterdir() if d.is_dir() and self.folds(d.name)
        )

    def folds(self, candidate_id: str) -> list[int]:
        """Finished folds of a candidate (those with a manifest and an array file)."""
        d = self.candidate_dir(candidate_id)
        out = []
        for js in d.glob(f"{_FOLD_PREFIX}*.json"):
            k = js.stem[len(_FOLD_PREFIX):]
            if k.isdigit() and js.with_suffix(".npz").is_file():
                out.append(int(k))
        return sorted(out)

    def has_fold(self, candidate_id: str, fold: int) -> bool:
        npz, js = self._paths(candidate_id, fold)
        return npz.is_file() and js.is_file()

    def read_manifest(self, candidate_id: str, fold: int) -> dict[str, Any]:
        _, js = self._paths(candidate_id, fold)
        try:
            manifest = json.loads(js.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{js}: candidate {candidate_id} has no fold {fold}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreError(f"{js}: manifest is not valid JSON") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"{js}: manifest must be a JSON object, not "
                             f"{type(manifest).__name__}; delete the fold and run the sweep "
                             "again to rewrite it")
        # A fold's files copied or swapped between candidates or folds would pass every
        # other check and mix two models' predictions into one candidate's OOF.
        for key, want in (("candidate_id", candidate_id), ("fold", fold)):
            if key in manifest and manifest[key] != want:
                raise StoreError(f"{js}: manifest says {key}={manifest[key]!r} but the file "
                                 f"is {candidate_id}'s fold {fold}: the store's files were moved "
                                 "or edited; delete the fold and run the sweep again")
        return manifest

    def update_manifest(self, candidate_id: str, fold: int, **fields: Any) -> dict[str, Any]:
        """Set fields of a finished fold's manifest (atomically); returns the new manifest."""
        manifest = self.read_manifest(candidate_id, fold)
        if any(manifest.get(k) != v for k, v in fields.items()):
            manifest.update(fields)
            atomic_write_json(self._paths(candidate_id, fold)[1], manifest)
        return manifest

    def _load(self, candidate_id: str, fold: int, names: tuple[str, ...],
              optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Arrays `names` (and `optional` ones, when present) of a fold file; StoreError else."""
        npz, _ = self._paths(candidate_id, fold)
        try:
            # allow_pickle=False: the store may come from another machine; never unpickle it.
            with np.load(npz, allow_pickle=False) as z:
                return {k: z[k] for k in (*names, *(n for n in optional if n in z.files))}
        except FileNotFoundError:
            raise StoreError(f"{npz}: candidate {candidate_id} has no fold {fold}") from None
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            # EOFError: a zero-byte file; BadZipFile: a truncated one (a copy cut short).
            raise StoreError(f"{npz}: unreadable prediction file ({type(err).__name__}: "
                             f"{str(err).strip() or 'empty or truncated'}); delete the fold "
                             "and run the sweep again to rewrite it") from None

    def read_fold(self, candidate_id: str, fold: int) -> FoldPrediction:
        manifest = self.read_manifest(candidate_id, fold)
        arrays = self._load(candidate_id, fold, ("val_keys", "val_targets", "val_probs",
                                                 "test_probs"), optional=("test_keys",))
        test_keys = arrays.pop("test_keys", None)
        npz, _ = self._paths(candidate_id, fold)
        if test_keys is not None:
            if len(test_keys) != len(arrays["test_probs"]):
                raise StoreError(f"{npz}: {len(test_keys)} test_keys but "
                                 f"{len(arrays['test_probs'])} test_probs rows")
            want = manifest.get("test_keys_sha256")
            if want is not None and want != keys_digest(test_keys):
                raise StoreError(f"{npz}: its test_keys are not the ones its manifest records "
                                 "(test_keys_sha256); the fold files are from two different "
                                 "runs: delete the fold and run the sweep again")
        return FoldPrediction(manifest=manifest, test_keys=test_keys, **arrays)

    def oof_correct(self, candidate_id: str,
                    folds: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Over `folds` (default: every finished fold): (keys (n,) str, correct (n,) bool).

        `correct` is argmax(val_probs) == val_target, the first maximum winning a tie (numpy's
        argmax rule, which the ensemble code's accuracy follows too); rows in fold order.
        """
        keys, correct = [], []
        for k in self.folds(candidate_id) if folds is None else folds:
            f = self.read_fold(candidate_id, k)
            keys.append(f.val_keys)
            correct.append(f.val_probs.argmax(axis=1) == f.val_targets)
        if not keys:
            return np.empty(0, dtype=str), np.empty(0, dtype=bool)
        return np.concatenate(keys), np.concatenate(correct)

    def completeness(self, candidate_id: str, train_keys: Iterable[str]) -> tuple[bool, str]:
        """Whether the candidate's folds' validation rows cover every train row exactly once.

        Returns (complete, reason); the reason names what is missing or duplicated.
        """
        train = list(train_keys)
        folds = self.folds(candidate_id)
        if not folds:
            return False, f"candidate {candidate_id} has no finished fold"
        n_folds = self.read_manifest(candidate_id, folds[0]).get("n_folds")
        if n_folds is not None:
            missing = sorted(set(range(int(n_folds))) - set(folds))
            if missing:
                return False, f"candidate {candidate_id} is missing fold(s) {missing}"
        seen: dict[str, int] = {}
        for k in folds:
            keys = self._load(candidate_id, k, ("val_keys",))["val_keys"]
            for key in keys.tolist():
                if key in seen:
                    return False, (
                        f"candidate {candidate_id}: row {key!r} is in folds {seen[key]} and {k}"
                    )
                seen[key] = k
        want = set(train)
        have = set(seen)
        if have != want:
            lost = sorted(want - have)
            extra = sorted(have - want)
            if lost:
                return False, (
                    f"candidate {candidate_id}: {len(lost)} train row(s) have no OOF prediction "
                    f"(first: {lost[0]!r})"
                )
            return False, (
                f"candidate {candidate_id}: {len(extra)} OOF row(s) are not in train.csv "
                f"(first: {extra[0]!r})"
            )
        return True, "complete"
