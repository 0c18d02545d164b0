"""The background writer: order, back-pressure, bounded flushes, and nothing lost at exit."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sketchtune.writer import BackgroundWriter

ROOT = Path(__file__).resolve().parent.parent


def test_writer_runs_calls_in_order_on_one_thread():
    w = BackgroundWriter()
    seen: list[tuple[int, str]] = []
    for i in range(200):
        assert w.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    assert w.flush()
    assert [i for i, _ in seen] == list(range(200))
    assert {name for _, name in seen} == {w.name} != {threading.current_thread().name}
    assert w.close() == 0 and w.pending == 0


def test_writer_full_queue_blocks_until_there_is_room():
    gate, seen = threading.Event(), []
    w = BackgroundWriter(maxsize=1, put_timeout_s=30)
    w.submit(gate.wait)  # the thread holds this one ...
    time.sleep(0.2)
    w.submit(seen.append, 1)  # ... and this one fills the queue
    threading.Timer(0.3, gate.set).start()
    assert w.submit(seen.append, 2)  # waits for room instead of dropping
    assert w.flush() and seen == [1, 2] and w.dropped == 0
    w.close()


def test_writer_full_queue_drops_and_counts_after_put_timeout():
    gate = threading.Event()
    w = BackgroundWriter(maxsize=1, put_timeout_s=0.1)
    w.submit(gate.wait)
    time.sleep(0.2)
    w.submit(print)
    start = time.monotonic()
    assert w.submit(print) is False
    assert w.dropped == 1 and time.monotonic() - start < 5
    gate.set()
    assert w.flush() and w.pending == 0
    w.close()


def test_writer_flush_and_close_give_up_on_a_stalled_call():
    gate = threading.Event()
    w = BackgroundWriter(stall_timeout_s=0.3)
    w.submit(gate.wait)
    w.submit(print)
    start = time.monotonic()
    assert w.flush() is False
    assert w.close() == 2 and time.monotonic() - start < 5
    # The stuck thread is abandoned; a new call gets a fresh thread and runs.
    seen: list[int] = []
    w.submit(seen.append, 1)
    assert w.flush() and seen == [1]
    gate.set()
    w.close()


def test_writer_survives_a_failing_call(caplog):
    w = BackgroundWriter(name="w")
    seen: list[int] = []

    def boom() -> None:
        raise ConnectionError("server gone\nmore lines")

    with caplog.at_level(logging.WARNING):
        w.submit(boom)
        w.submit(seen.append, 1)
        assert w.flush()
    assert seen == [1]
    assert "boom failed (ConnectionError: server gone)" in caplog.text
    w.close()


def test_writer_pickles_its_settings_not_its_thread():
    w = BackgroundWriter(maxsize=7, put_timeout_s=1.5, stall_timeout_s=2.5, name="x")
    w.submit(print)
    copy = pickle.loads(pickle.dumps(w))
    assert (copy.maxsize, copy.put_timeout_s, copy.stall_timeout_s, copy.name) == (7, 1.5, 2.5,
                                                                                  "x")
    assert copy.pending == 0 and copy.submitted == 0
    w.close()


def test_writer_rejects_bad_settings():
    with pytest.raises(ValueError, match="maxsize must be at least 1 but got 0"):
        BackgroundWriter(maxsize=0)
    with pytest.raises(ValueError, match="cannot be negative"):
        BackgroundWriter(put_timeout_s=-1)


# A process that queues 100 slow writes to a file, then ends in one of several ways.
_SCRIPT = """
import os, signal, sys, time
from sketchtune.writer import BackgroundWriter

out = open(sys.argv[1], "a")
w = BackgroundWriter(stall_timeout_s=1.0)

def write(i):
    time.sleep(0.005)
    out.write(f"{i}\\n"); out.flush()

how = sys.argv[2]
if how == "hung":
    w.submit(time.sleep, 3600)
for i in range(100):
    w.submit(write, i)
if how == "interrupt":
    raise KeyboardInterrupt
if how == "sigterm":
    # What ray.init installs in a driver: SIGTERM becomes sys.exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
"""


@pytest.mark.parametrize("how", ["return", "interrupt", "sigterm"])
def test_writer_queue_is_written_at_exit(tmp_path, how):
    out = tmp_path / "out.txt"
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(out), how], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0 if how != "return" else done.returncode == 0, done.stderr
    assert out.read_text().split() == [str(i) for i in range(100)]


def test_writer_stuck_on_a_hung_call_does_not_hang_exit(tmp_path):
    out = tmp_path / "out.txt"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(out), "hung"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and time.monotonic() - start < 60
    assert "101 queued call(s) not written at exit" in done.stderr
    assert not out.exists() or not out.read_text()
