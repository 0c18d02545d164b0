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

The sweep folder is a local path or a cloud URI (`sketchtune.fs`). Locally every file is
written to a temporary name in the same folder and renamed into place; on an object store (no
rename) each object is written whole to its final key. Either way the manifest is the marker:
a rewrite deletes it first and writes it last, and it records each file's size and sha256
(`files`), so a crash or a full disk never leaves a fold that a later run would trust; a cloud
object that does not match its record is refused (size and sha256). Local files
get the mode a plain `open()` would give (0666 less the umask), so teammates sharing the store
can read it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import fs
from .config import TrainConfig, prediction_sets
from .errors import StoreError
from .fs import Location, location

__all__ = ["FoldPrediction", "PredictionStore", "keys_digest"]

_FOLD_PREFIX = "fold"


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


def atomic_write_json(path: Location, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    fs.write_bytes(path, text.encode())


def file_record(data: bytes) -> dict[str, Any]:
    """What a manifest records of a file it vouches for: its size and sha256."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class PredictionStore:
    """Reads and writes one sweep's predictions. `root` is the sweep folder (path or URI)."""

    def __init__(self, root: str | Path | fs.URI) -> None:
        self.root: Location = location(root)

    # ------------------------------------------------------------------ paths
    @property
    def candidates_dir(self) -> Location:
        return self.root / "candidates"

    def candidate_dir(self, candidate_id: str) -> Location:
        return self.candidates_dir / candidate_id

    def _paths(self, candidate_id: str, fold: int) -> tuple[Location, Location]:
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
        files: dict[str, bytes] | None = None,
    ) -> Location:
        """Store one fold: `files` (name -> bytes, e.g. the weights) and the arrays first, the
        manifest last, each written whole; the manifest records every file's size and sha256.

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
        # Un-commit a fold being rewritten (a retried trial) before touching its files: a
        # writer that dies half way then leaves a fold without manifest, which no reader
        # trusts, never the old manifest vouching for new arrays.
        fs.delete(js)
        buf = io.BytesIO()
        np.savez(
            buf, val_keys=val_keys, val_targets=val_targets, val_probs=val_probs,
            test_keys=test_keys, test_probs=test_probs,
        )
        records = {}
        for name, data in {**(files or {}), npz.name: buf.getvalue()}.items():
            fs.write_bytes(self.candidate_dir(candidate_id) / name, data)
            records[name] = file_record(data)
        full = {
            **manifest,
            "candidate_id": candidate_id,
            "fold": int(fold),
            "num_classes": int(val_probs.shape[1]),
            "n_val": int(len(val_keys)),
            "n_test": int(len(test_probs)),
            "test_keys_sha256": keys_digest(test_keys),
            "files": records,
        }
        atomic_write_json(js, full)  # the marker, last
        return js

    # ------------------------------------------------------------------ read
    def candidates(self) -> list[str]:
        """Candidate ids that have at least one finished fold, sorted."""
        entries = fs.list_dir(self.candidates_dir)
        return sorted(name for name, size in entries.items()
                      if size is None and self.folds(name))

    def folds(self, candidate_id: str) -> list[int]:
        """Finished folds of a candidate: those whose manifest (the marker, written last)
        exists beside their array file. One listing, also on an object store."""
        entries = fs.list_dir(self.candidate_dir(candidate_id))
        out = []
        for name in entries:
            k = name[len(_FOLD_PREFIX):-len(".json")]
            if name.startswith(_FOLD_PREFIX) and name.endswith(".json") and k.isdigit() \
                    and f"{_FOLD_PREFIX}{k}.npz" in entries:
                out.append(int(k))
        return sorted(out)

    def has_fold(self, candidate_id: str, fold: int) -> bool:
        npz, js = self._paths(candidate_id, fold)
        return fs.is_file(npz) and fs.is_file(js)

    def trained(self, train: TrainConfig, fold: int) -> bool:
        """Whether every prediction set one training of `train` stores (`config.prediction_sets`:
        the candidate, its views, its EMA weights') has `fold`: only then is no trial needed."""
        return all(self.has_fold(s.id, fold) for s in prediction_sets(train))

    def trained_folds(self, train: TrainConfig) -> list[int]:
        """The folds `trained` says are done, from one listing per prediction set."""
        sets = prediction_sets(train)
        done = set(self.folds(sets[0].id))
        for s in sets[1:]:
            done &= set(self.folds(s.id))
        return sorted(done)

    def read_manifest(self, candidate_id: str, fold: int) -> dict[str, Any]:
        _, js = self._paths(candidate_id, fold)
        try:
            manifest = json.loads(fs.read_bytes(js).decode("utf-8"))
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
              optional: tuple[str, ...] = (),
              record: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Arrays `names` (and `optional` ones, when present) of a fold file; StoreError else.

        `record` (the manifest's size and sha256 of the file): a cloud object is read whole
        and checked against it (an object store's writes are not atomic as a set). A local
        file is read as before, lazily: its rename already made it whole.
        """
        npz, _ = self._paths(candidate_id, fold)
        try:
            if isinstance(npz, Path) or not record:
                src: Any = fs.open_input(npz)
            else:
                data = fs.read_bytes(npz)
                if file_record(data) != {k: record.get(k) for k in ("bytes", "sha256")}:
                    self._mismatch(npz, "size or sha256")
                src = io.BytesIO(data)
            # allow_pickle=False: the store may come from another machine; never unpickle it.
            with src, np.load(src, allow_pickle=False) as z:
                return {k: z[k] for k in (*names, *(n for n in optional if n in z.files))}
        except FileNotFoundError:
            raise StoreError(f"{npz}: candidate {candidate_id} has no fold {fold}") from None
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            if isinstance(err, StoreError):
                raise
            # EOFError: a zero-byte file; BadZipFile: a truncated one (a copy cut short).
            raise StoreError(f"{npz}: unreadable prediction file ({type(err).__name__}: "
                             f"{str(err).strip() or 'empty or truncated'}); delete the fold "
                             "and run the sweep again to rewrite it") from None

    @staticmethod
    def _mismatch(npz: Location, what: str) -> None:
        raise StoreError(f"{npz}: its {what} is not what its manifest records (cut short, or "
                         "replaced after the fold was written): delete the fold and run the "
                         "sweep again")

    def read_fold(self, candidate_id: str, fold: int) -> FoldPrediction:
        manifest = self.read_manifest(candidate_id, fold)
        npz, _ = self._paths(candidate_id, fold)
        record = (manifest.get("files") or {}).get(npz.name)
        arrays = self._load(candidate_id, fold, ("val_keys", "val_targets", "val_probs",
                                                 "test_probs"), optional=("test_keys",),
                            record=record if isinstance(record, dict) else None)
        for name in ("val_probs", "test_probs"):
            if arrays[name].ndim != 2:
                raise StoreError(f"{npz}: {name} has shape {arrays[name].shape}, not (rows, "
                                 "classes): delete the fold and run the sweep again")
        for name, kind in (("val_targets", np.integer), ("val_probs", np.floating),
                           ("test_probs", np.floating)):
            if not np.issubdtype(arrays[name].dtype, kind):
                raise StoreError(f"{npz}: {name} holds {arrays[name].dtype}, not "
                                 f"{kind.__name__}: delete the fold and run the sweep again")
        if not len(arrays["val_keys"]) == len(arrays["val_targets"]) == len(arrays["val_probs"]):
            raise StoreError(f"{npz}: {len(arrays['val_keys'])} val_keys, "
                             f"{len(arrays['val_targets'])} val_targets and "
                             f"{len(arrays['val_probs'])} val_probs rows disagree: delete the "
                             "fold and run the sweep again")
        # `predict --images` sizes the model's head from the manifest's class count, the
        # ensemble reads the arrays': a manifest edited or mixed up with another fold's would
        # build a head that does not fit the weights, or vouch for the wrong arrays.
        c = manifest.get("num_classes")
        if c is not None and (isinstance(c, bool) or c != arrays["val_probs"].shape[-1]
                              or c != arrays["test_probs"].shape[-1]):
            raise StoreError(f"{npz}: its manifest says num_classes={c!r} but val_probs has "
                             f"{arrays['val_probs'].shape[-1]} and test_probs "
                             f"{arrays['test_probs'].shape[-1]} classes: delete the fold and "
                             "run the sweep again")
        test_keys = arrays.pop("test_keys", None)
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
