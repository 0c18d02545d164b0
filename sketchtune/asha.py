"""ASHA that never stops a trial at its last epoch: it is done, and must write its predictions.

Ray's ASHA puts rungs at grace_period * reduction_factor**k up to and including max_t, so
when max_t / grace_period is a power of the reduction factor (epochs 4, grace 1, factor 2;
epochs 9, grace 3, factor 3; any run of 1 epoch with grace 1) the last rung sits on the
last epoch. `stop_last_trials=False` does not help there: the rung's cutoff still stops
the trials below it, at the report of the epoch they end on anyway. The trial then leaves
through an exception in `tune.report`, before it writes its fold predictions, and a trial
that trained every epoch is lost to `search.select: ensemble` and to the store.

The trainer marks the report of its last epoch (`LAST_EPOCH`: the planned last one, or
the one early stopping ends on); for those results this scheduler records the score in its
rung, as ASHA does, and lets the trial finish. Imports Ray: import it where Ray runs.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from .job import LAST_EPOCH

__all__ = ["FinishingASHA"]


class FinishingASHA(ASHAScheduler):
    """`ASHAScheduler` whose STOP never reaches a result marked `LAST_EPOCH`."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)  # records the rung
        if action == TrialScheduler.STOP and result.get(LAST_EPOCH):
            self._num_stopped -= 1  # counted by ASHA, but the trial ends on its own
            return TrialScheduler.CONTINUE
        return action
