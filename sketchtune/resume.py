"""Resume: what a restarted sweep continues, at its three levels.

- A (candidate, fold) whose predictions are in the store is never trained again: the cv
  stage plans only the others (`planner.plan_cv_jobs`), and a trial that finds its fold
  there reports it and returns (`trainable.trial`); both ask `PredictionStore.trained`
  (every prediction set of the training: the candidate, its views, its EMA weights').
- A stage whose experiment folder exists is restored rather than started again
  (`restore_tuner`); one of an older config is left alone, with a warning.
- A trial checkpoints its `FitState` each epoch beside its metrics, with the state's size
  and sha256 beside it, and checks that the storage holds it whole (`report_with_state`); a
  retried or restored trial continues from it only if it is whole, else starts its fold
  again (`restored_state`); a finished trial's state is replaced by a few-byte stub
  (`release_checkpoints`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from . import fs
from .errors import StoreError, first_line

__all__ = ["RELEASED", "can_restore", "load_state", "not_whole", "recover_checkpoints",
           "release_checkpoints", "report_with_state", "restore_tuner", "restored_state",
           "save_state"]

_log = logging.getLogger(__name__)

RELEASED = "released"  # the key of the stub that replaces a finished trial's checkpoint
_STATE = "state.pt"  # the file in each Ray checkpoint folder
_RECORD = "state.json"  # beside it: the state's size and sha256, as the store's manifests do


def _record(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def not_whole(folder: Path) -> str | None:
    """Why the checkpoint in `folder` cannot be continued from, or None when it is whole.

    Its state must be there and match its record. A checkpoint saved before records were
    written has none: torch.load still refuses one cut short.
    """
    state, record = folder / _STATE, folder / _RECORD
    if not state.is_file():
        return f"{_STATE} is missing"
    if record.is_file() and _record(state) != json.loads(record.read_text()):
        return f"{_STATE} is not what {_RECORD} records (size or sha256)"
    return None


def save_state(folder: Path, state: dict[str, Any]) -> dict[str, Any]:
    """`state` (a `FitState.state_dict()`) into `folder` with its record beside it; the record."""
    import torch

    torch.save(state, folder / _STATE)
    record = _record(folder / _STATE)
    (folder / _RECORD).write_text(json.dumps(record))
    return record


def load_state(path: Path) -> dict[str, Any]:
    """A `FitState.state_dict()` saved with torch.save, read without running any pickle code.

    `weights_only=True` lets through tensors and plain containers only; anything else in the
    file (a planted object whose unpickling would run code) is refused with a StoreError.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise StoreError(f"{path}: refused to load a checkpoint that holds more than tensors "
                         f"({first_line(err)})") from None


def report_with_state(result: dict[str, Any], state: Any) -> None:
    """Inside a Ray trial: report `result` with `state` (a FitState) as the trial's checkpoint.

    Ray uploads the checkpoint with `pyarrow.fs.copy_files`, which returns as if all went well
    when the storage fails during an upload (pyarrow 25 prints only "Error ignored when
    destroying file"), and Ray then records a checkpoint without its state. So the upload is
    checked here: a state that did not arrive whole fails the trial, whose retry starts again.
    """
    from ray import tune

    with tempfile.TemporaryDirectory() as d:
        record = save_state(Path(d), state.state_dict())
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
    storage = tune.get_context().get_storage()
    where, path = storage.storage_filesystem, storage.checkpoint_fs_path  # the one just reported
    saved = where.get_file_info([f"{path}/{_STATE}", f"{path}/{_RECORD}"])
    if saved[0].size != record["bytes"] or saved[1].size is None:
        where = path if where.type_name == "local" else f"{where.type_name}://{path}"
        raise StoreError(f"{where}: the checkpoint was not saved whole (the storage failed "
                         "during its upload)")


def restored_state() -> dict[str, Any] | None:
    """Inside a Ray trial: the state to continue from, or None to start afresh.

    None when the trial has no checkpoint (its first attempt), when its checkpoint was
    released (a trial the scheduler stopped, restored after a driver restart: it starts over),
    or when the checkpoint is not whole (its upload failed): the fold starts again from its
    first epoch, with one warning, instead of failing the same way on every retry.
    """
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        why = not_whole(Path(d))
        try:
            state = load_state(Path(d) / _STATE) if why is None else {}
        except (RuntimeError, EOFError, OSError) as err:  # cut short (no record to say so)
            why = f"{_STATE} cannot be read ({first_line(err)})"
    if why is not None:
        _log.warning("%s: %s: this trial's fold starts again from its first epoch",
                     ckpt.path, why)
        return None
    return None if state.get(RELEASED) else state


def release_checkpoints(trial_path: str | None, filesystem: Any = None) -> None:
    """Replace a finished trial's Ray checkpoint state with a few-byte stub.

    A checkpoint holds the model, the optimizer state and the best weights, about 4x the
    model's size (1.6 GB for caformer_b36). A trial that ran to the end has its predictions
    and best weights in the store; one that ASHA stopped is never continued. The folder
    stays: if the driver dies before Tune records the trial as finished, a restart restores
    the trial from this folder, finds its fold in the store and trains nothing (or, for a
    stopped trial, sees the stub and starts it afresh).

    trial_path: Tune's `trial.path`, a local folder or, with cloud storage, a path inside
    `filesystem` (the trial's pyarrow filesystem, `trial.storage.storage_filesystem`): there
    each checkpoint's state object is overwritten with the stub (one PUT, atomic on S3), so a
    bucket does not keep 1.6 GB per trial either.
    """
    import torch

    if not trial_path:
        return
    if os.path.isdir(trial_path):
        for state in Path(trial_path).glob(f"checkpoint_*/{_STATE}"):
            state.with_name(_RECORD).unlink(missing_ok=True)  # first: a stub has no record
            stub = state.with_name(f".{_STATE}.tmp")
            torch.save({RELEASED: True}, stub)
            os.replace(stub, state)
        return
    if filesystem is None:
        return
    from pyarrow import fs as pafs

    try:
        folders = filesystem.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
    except OSError as err:  # a stub is a saving, not a result: never fail the sweep for it
        _log.warning("could not list %s to release its checkpoints: %s", trial_path,
                     first_line(err))
        return
    buf = io.BytesIO()
    torch.save({RELEASED: True}, buf)
    for info in folders:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        state = f"{info.path}/{_STATE}"
        try:
            if filesystem.get_file_info(state).type != pafs.FileType.File:
                continue
            record = f"{info.path}/{_RECORD}"
            if filesystem.get_file_info(record).type == pafs.FileType.File:
                filesystem.delete_file(record)  # first: a stub has no record
            with filesystem.open_output_stream(state) as out:
                out.write(buf.getvalue())
        except OSError as err:
            _log.warning("could not release the checkpoint %s: %s", state, first_line(err))


def can_restore(path: str) -> bool:
    """Whether a stage's experiment folder holds a Tune experiment to continue."""
    from ray import tune

    return tune.Tuner.can_restore(path)


def restore_tuner(stage: str, root: fs.Location, name: str, trainable: Any,
                  param_space: dict[str, Any]) -> Any | None:
    """The stage's Tuner restored from `root/name` (unfinished and errored trials resume), or
    None: then a search stage warns about its experiments of older configs, which are not
    resumed (their trials would run the old config, and fail again if that was why they
    stopped; their finished folds are in the prediction store either way).

    `param_space` is passed again because Tune cannot re-read objects it could not save.
    """
    from ray import tune

    path = str(root / name)
    if not tune.Tuner.can_restore(path):
        stale = sorted(str(root / d) for d, size in fs.list_dir(root).items()
                       if size is None and d.startswith(stage) and d != name
                       and stage == "search" and can_restore(str(root / d)))
        if stale:
            _log.warning("%s: the config differs from the one of %s; starting a fresh "
                         "experiment %s (delete the old one to free its disk)", stage,
                         stale[-1], name)
        return None
    _log.info("resuming %s from %s", stage, path)
    tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                               param_space=param_space)
    # Tune's own view of the experiment (public API), read before any trial restarts.
    experiment_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    old_level = experiment_log.level
    experiment_log.setLevel(logging.ERROR)  # "failed to fetch metrics" of trials not started
    try:
        latest = [r.checkpoint for r in tuner.get_results()]
    finally:
        experiment_log.setLevel(old_level)
    for name in recover_checkpoints(latest):
        _log.warning("%s: %s, the checkpoint the experiment state names, was deleted after a "
                     "newer one was saved (the driver was killed in between); the newer one "
                     "takes its place", stage, name)
    return tuner


def recover_checkpoints(latest: list[Any]) -> list[str]:
    """Put the newest checkpoint of a trial where the experiment state expects its latest one.

    `latest`: each trial's latest checkpoint as the experiment state records it (a
    `ray.tune.Checkpoint` or None). Tune deletes a trial's older checkpoint as soon as a newer
    one is registered (`num_to_keep=1`), but saves the experiment state only afterwards: a
    driver killed in between leaves a state that names the deleted checkpoint, and the trial
    then fails on every retry ("does not exist on storage anymore"), on every resume. The
    newer checkpoint is in the trial's folder, so it is renamed to the recorded name and the
    trial continues from it. Local folders only (a rename is not atomic on object stores).
    Returns the paths it recovered.
    """
    done = []
    for ckpt in latest:
        if ckpt is None or ckpt.filesystem.type_name != "local":
            continue
        want = Path(ckpt.path)
        if want.exists() or not want.parent.is_dir():
            continue
        newer = sorted(p for p in want.parent.glob("checkpoint_*")
                       if p.name > want.name and (p / _STATE).is_file())
        if newer:
            os.replace(newer[-1], want)
            done.append(str(want))
    return done
