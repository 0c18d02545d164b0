"""The Ray trial's own log: progress lines reach the worker's stderr, once, for that trial only."""

from __future__ import annotations

import logging

from sketchtune.trainable import _trial_log


def test_trial_log_prefixes_lines_with_the_trial_and_goes_with_it(capsys):
    engine = logging.getLogger("sketchtune.engine")
    before = logging.getLogger("sketchtune").handlers[:]
    with _trial_log("abc123 fold 2"):
        engine.info("epoch 1/3 train: batch 4/10, 9.6 img/s, ETA 0:12")
    engine.info("after the trial")
    err = capsys.readouterr().err
    assert err.count("abc123 fold 2: epoch 1/3 train: batch 4/10, 9.6 img/s, ETA 0:12\n") == 1
    assert "after the trial" not in err
    assert logging.getLogger("sketchtune").handlers == before  # a reused worker: none piles up
