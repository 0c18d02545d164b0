"""Trial checkpoints: released stubs, and state files loaded without running pickle code."""

from __future__ import annotations

import torch

from sketchtune.resume import (
    RELEASED,
    load_state,
    not_whole,
    recover_checkpoints,
    release_checkpoints,
    save_state,
)


def test_release_checkpoints_leaves_a_small_stub_that_loads_as_released(tmp_path):
    ckpt = tmp_path / "checkpoint_000002"
    ckpt.mkdir()
    torch.save({"epoch": 2, "model": {"w": torch.zeros(100_000)}}, ckpt / "state.pt")
    release_checkpoints(str(tmp_path))
    assert (ckpt / "state.pt").stat().st_size < 2000
    assert load_state(ckpt / "state.pt") == {RELEASED: True}
    assert [p.name for p in ckpt.iterdir()] == ["state.pt"]  # no temporary file left


def test_not_whole_names_a_missing_or_changed_state_and_passes_a_whole_one(tmp_path):
    """What restored_state asks before continuing from a checkpoint: an upload that failed
    leaves an empty folder (or a state cut short), never continued from."""
    ckpt = tmp_path / "checkpoint_000000"
    ckpt.mkdir()
    assert not_whole(ckpt) == "state.pt is missing"  # the folder a failed upload leaves
    save_state(ckpt, {"epoch": 1, "model": {"w": torch.zeros(1000)}})
    assert not_whole(ckpt) is None
    data = (ckpt / "state.pt").read_bytes()
    for changed in (data[:-10], data[:-1] + bytes([data[-1] ^ 1])):  # cut short; one bit
        (ckpt / "state.pt").write_bytes(changed)
        assert not_whole(ckpt) == "state.pt is not what state.json records (size or sha256)"
    (ckpt / "state.json").unlink()  # saved before records were written: torch.load decides
    assert not_whole(ckpt) is None


def test_release_checkpoints_drops_the_record_so_a_stub_is_whole(tmp_path):
    ckpt = tmp_path / "checkpoint_000001"
    ckpt.mkdir()
    save_state(ckpt, {"epoch": 1, "model": {"w": torch.zeros(1000)}})
    release_checkpoints(str(tmp_path))
    assert not_whole(ckpt) is None and load_state(ckpt / "state.pt") == {RELEASED: True}
    assert [p.name for p in ckpt.iterdir()] == ["state.pt"]


def test_release_checkpoints_without_a_local_folder_does_nothing(tmp_path):
    release_checkpoints(None)
    release_checkpoints(str(tmp_path / "missing"))  # e.g. a trial stored in the cloud
    assert not (tmp_path / "missing").exists()


def test_release_checkpoints_in_cloud_storage_overwrites_each_state_through_its_filesystem(
        tmp_path):
    # A trial stored in a bucket: Tune's trial.path is a path inside the trial's pyarrow
    # filesystem, not a local folder. A SubTreeFileSystem stands in for the bucket.
    from pyarrow import fs

    bucket = fs.SubTreeFileSystem(str(tmp_path), fs.LocalFileSystem())
    trial = tmp_path / "sweeps" / "ray" / "cv" / "trial_1"
    for k in (1, 2):
        (trial / f"checkpoint_00000{k}").mkdir(parents=True)
        save_state(trial / f"checkpoint_00000{k}", {"model": {"w": torch.zeros(100_000)}})
    (trial / "checkpoint_000003").mkdir()  # a checkpoint folder without a state: left alone
    (trial / "result.json").write_text("{}")
    release_checkpoints("sweeps/ray/cv/trial_1", bucket)
    for k in (1, 2):
        state = trial / f"checkpoint_00000{k}" / "state.pt"
        assert state.stat().st_size < 2000 and load_state(state) == {RELEASED: True}
        assert not_whole(state.parent) is None  # its record went first
    assert not any((trial / "checkpoint_000003").iterdir())
    assert (trial / "result.json").read_text() == "{}"
    release_checkpoints("sweeps/ray/cv/no_such_trial", bucket)  # nothing there: no error


def test_recover_checkpoints_renames_the_newest_to_the_deleted_one_the_state_names(tmp_path):
    """A driver killed after Tune deleted a trial's older checkpoint but before it saved the
    experiment state: the state names the deleted one; the newest takes its name."""
    from ray.tune import Checkpoint

    trial = tmp_path / "trial_1"
    for name, epoch in (("checkpoint_000002", 3), ("checkpoint_000003", 4)):
        (trial / name).mkdir(parents=True)
        torch.save({"epoch": epoch}, trial / name / "state.pt")
    (trial / "checkpoint_000009").mkdir()  # no state file: not a checkpoint to continue from
    kept = tmp_path / "trial_2" / "checkpoint_000000"
    kept.mkdir(parents=True)
    torch.save({"epoch": 1}, kept / "state.pt")
    gone = trial / "checkpoint_000001"
    latest = [Checkpoint.from_directory(str(gone)), Checkpoint.from_directory(str(kept)), None,
              Checkpoint.from_directory(str(tmp_path / "trial_3" / "checkpoint_000000"))]

    assert recover_checkpoints(latest) == [str(gone)]
    assert load_state(gone / "state.pt") == {"epoch": 4}
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_000001", "checkpoint_000002",
                                                      "checkpoint_000009"]
    assert load_state(kept / "state.pt") == {"epoch": 1}  # a checkpoint that exists is kept
    assert not (tmp_path / "trial_3").exists()  # a trial without a folder is left to Tune
    assert recover_checkpoints(latest) == []  # nothing left to recover
