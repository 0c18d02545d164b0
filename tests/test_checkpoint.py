"""Trial checkpoints: released stubs, and state files loaded without running pickle code."""

from __future__ import annotations

import torch

from sketchtune.checkpoint import RELEASED, load_state, release_checkpoints


def test_release_checkpoints_leaves_a_small_stub_that_loads_as_released(tmp_path):
    ckpt = tmp_path / "checkpoint_000002"
    ckpt.mkdir()
    torch.save({"epoch": 2, "model": {"w": torch.zeros(100_000)}}, ckpt / "state.pt")
    release_checkpoints(str(tmp_path))
    assert (ckpt / "state.pt").stat().st_size < 2000
    assert load_state(ckpt / "state.pt") == {RELEASED: True}
    assert [p.name for p in ckpt.iterdir()] == ["state.pt"]  # no temporary file left


def test_release_checkpoints_without_a_local_folder_does_nothing(tmp_path):
    release_checkpoints(None)
    release_checkpoints(str(tmp_path / "missing"))  # e.g. a trial stored in the cloud
    assert not (tmp_path / "missing").exists()
