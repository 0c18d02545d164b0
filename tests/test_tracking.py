"""The failure-tolerant MLflow tracker: failures counted, a dead server not waited on."""

from __future__ import annotations

import time

import sketchtune.tracking as tracking
from sketchtune.tracking import FAILURES_IN_A_ROW, Tracker


def test_tracker_pauses_calls_to_a_server_that_keeps_failing(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "PAUSE_S", 0.5)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "pause")
    run = tracker.client.create_run(tracker.experiment_id).info.run_id
    real, calls = tracker.client.log_batch, []

    def hung(*args, **kwargs):
        calls.append(1)
        raise TimeoutError("read timed out")  # what a hung server gives after its timeout

    monkeypatch.setattr(tracker.client, "log_batch", hung)
    for step in range(10):
        tracker.log_metrics(run, {"val_acc": 0.5}, step=step)
    # Only the first calls waited on the server; every one is counted as failed.
    assert len(calls) == FAILURES_IN_A_ROW
    assert tracker.failures == ["log metrics"] * 10
    # After the pause the server is tried again, and a success ends the count.
    monkeypatch.setattr(tracker.client, "log_batch", real)
    time.sleep(0.6)
    tracker.log_metrics(run, {"val_acc": 0.7}, step=10)
    assert [m.step for m in tracker.client.get_metric_history(run, "val_acc")] == [10]
    assert len(tracker.failures) == 10


def test_tracker_submit_runs_queued_jobs_in_order_and_counts_their_errors(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "queued")
    seen: list[int] = []

    def broken() -> None:
        raise KeyError("a bug in a queued job")

    tracker.submit("first", seen.append, 1)
    tracker.submit("broken job", broken)
    tracker.submit("third", seen.append, 3)
    assert tracker.flush()
    assert seen == [1, 3] and tracker.failures == ["broken job"]
    tracker.close()
    assert tracker.writer.pending == 0 and tracker.failures == ["broken job"]
