"""FinishingASHA: ASHA's decisions, except that a trial's last epoch is never cut."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")
from ray.tune.schedulers import ASHAScheduler, TrialScheduler  # noqa: E402

from sketchtune.asha import FinishingASHA  # noqa: E402
from sketchtune.job import LAST_EPOCH  # noqa: E402


def _decisions(cls, last: bool) -> list[str]:
    # max_t 2, grace 1, factor 2: rungs at 1 and 2, the last one on the last epoch. Trial a
    # sets each rung's bar, trial b falls below it at epoch 2.
    s = cls(time_attr="training_iteration", metric="val_acc", mode="max", max_t=2,
            grace_period=1, reduction_factor=2, stop_last_trials=False)
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for t in (a, b):
        s.on_trial_add(None, t)
    out = []
    for trial, it, acc in ((a, 1, 0.5), (b, 1, 0.6), (a, 2, 0.9), (b, 2, 0.7)):
        result = {"training_iteration": it, "val_acc": acc, **({LAST_EPOCH: 1} if last and it == 2
                                                                else {})}
        out.append(s.on_trial_result(None, trial, result))
    return out


def test_asha_cuts_a_trial_on_a_rung_at_its_last_epoch():
    # The premise: Ray's ASHA stops b at epoch 2, the epoch it ends on anyway, so b would leave
    # through tune.report before writing its predictions.
    assert _decisions(ASHAScheduler, last=True)[-1] == TrialScheduler.STOP


def test_finishing_asha_lets_a_trial_finish_its_last_epoch_and_decides_as_asha_otherwise():
    assert _decisions(FinishingASHA, last=True)[-1] == TrialScheduler.CONTINUE
    # Unmarked results (a trial with epochs left) get exactly ASHA's decisions.
    assert _decisions(FinishingASHA, last=False) == _decisions(ASHAScheduler, last=False)
    assert _decisions(FinishingASHA, last=False)[-1] == TrialScheduler.STOP
