"""Stage plumbing that needs no Ray: a stage Tune stopped early is an interruption."""

from __future__ import annotations

import pytest

from sketchtune.stages import _fit


class _Results(list):
    def __init__(self, n: int, terminated: int, errors: int) -> None:
        super().__init__(range(n))
        self.num_terminated, self.num_errors = terminated, errors


class _Tuner:
    def __init__(self, results: _Results) -> None:
        self.results = results

    def fit(self) -> _Results:
        return self.results


def test_fit_stopped_by_ctrl_c_raises_keyboard_interrupt():
    # Tune catches SIGINT, saves and returns with trials still pending: not a finished stage.
    with pytest.raises(KeyboardInterrupt):
        _fit(_Tuner(_Results(5, terminated=1, errors=1)))


def test_fit_whose_trials_all_ended_returns_the_results():
    results = _Results(5, terminated=3, errors=2)
    assert _fit(_Tuner(results)) is results


def test_describe_error_takes_a_restored_error_given_as_text():
    # Tune can hand back a restored trial's error as a string: one line, not AttributeError.
    from sketchtune.stages import describe_error

    assert describe_error("TuneError: the trial failed\nTraceback ...") == \
        "TuneError: the trial failed"
    assert describe_error(ValueError("bad value")) == "ValueError: bad value"
