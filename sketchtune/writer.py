"""A bounded queue drained by one background thread: slow side work kept off a driver's loop."""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .errors import first_line

__all__ = ["BackgroundWriter"]

_log = logging.getLogger(__name__)

_STOP = object()  # the item that ends a writer thread


class BackgroundWriter:
    """Runs submitted calls one at a time, in the order submitted, on one daemon thread.

    One thread keeps the order: a tracking run is created before its metrics are logged, and
    a failed attempt's run is closed before its retry opens one. The queue is bounded: when
    the writer falls behind, `submit` blocks (back-pressure: the driver slows to the writer's
    pace rather than losing records) for at most `put_timeout_s`, and only then drops the call
    and counts it in `dropped`, so a writer stuck on a dead server never stalls the caller
    for longer than that. `flush` and `close` give up once no call has finished for
    `stall_timeout_s`, and every live writer is closed at interpreter exit (atexit), so
    nothing queued is lost on a normal exit, Ctrl-C or SIGTERM (which Ray's driver turns into
    `sys.exit`), and a hung server delays exit by that long at most. The thread starts on the
    first `submit`; a writer that never gets a call costs nothing.
    """

    def __init__(self, maxsize: int = 1000, put_timeout_s: float = 5.0,
                 stall_timeout_s: float = 30.0, name: str = "writer") -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1 but got {maxsize}.")
        if put_timeout_s < 0 or stall_timeout_s < 0:
            raise ValueError("put_timeout_s and stall_timeout_s cannot be negative but got "
                             f"{put_timeout_s} and {stall_timeout_s}.")
        self.maxsize, self.put_timeout_s = maxsize, put_timeout_s
        self.stall_timeout_s, self.name = stall_timeout_s, name
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.Queue = queue.Queue(self.maxsize)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.submitted = 0  # calls accepted into the queue
        self.done = 0  # calls that ran (or raised)
        self.dropped = 0  # calls refused because the queue stayed full for put_timeout_s

    # A thread, a queue and a lock cannot be pickled; a copy starts empty with the settings.
    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("maxsize", "put_timeout_s", "stall_timeout_s",
                                              "name")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def pending(self) -> int:
        """Calls submitted that have not finished yet."""
        return self.submitted - self.done

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Queue `fn(*args, **kwargs)`; False when it was dropped (the queue stayed full)."""
        self._start()
        with self._cond:
            self.submitted += 1  # counted before it can run, so a flush never misses it
        try:
            self._queue.put((fn, args, kwargs), timeout=self.put_timeout_s)
        except queue.Full:
            with self._cond:
                self.submitted -= 1
                self.dropped += 1
            return False
        return True

    def flush(self, stall_timeout_s: float | None = None) -> bool:
        """Wait until every call submitted so far has run; False if the writer stalled.

        "Stalled": no call finished for `stall_timeout_s` (default: the writer's own), which
        bounds the wait on a server that stopped answering however long the backlog is.
        """
        limit = self.stall_timeout_s if stall_timeout_s is None else stall_timeout_s
        with self._cond:
            target = self.submitted
            seen, since = self.done, time.monotonic()
            while self.done < target:
                if self._thread is None or not self._thread.is_alive():
                    return False
                waited = time.monotonic() - since
                if waited >= limit:
                    return False
                self._cond.wait(min(0.5, limit - waited))
                if self.done != seen:
                    seen, since = self.done, time.monotonic()
        return True

    def close(self, stall_timeout_s: float | None = None) -> int:
        """Flush, then stop the thread. Returns how many queued calls were left unrun (0 unless
        the writer stalled; its thread is then abandoned, a daemon that exit does not wait for).
        A later `submit` starts a fresh thread."""
        if self._thread is None:
            return 0
        if self.flush(stall_timeout_s):
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
            _live.discard(self)
            return 0
        left = self.pending
        _live.discard(self)
        self._reset()
        return left

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._drain, args=(self._queue, self._cond),
                                        name=self.name, daemon=True)
        self._thread.start()
        _live.add(self)

    def _drain(self, q: queue.Queue, cond: threading.Condition) -> None:
        # The queue and lock come as arguments: after an abandoning close() the writer has new
        # ones, and a thread that finally wakes up must not count against them.
        while True:
            item = q.get()
            if item is _STOP:
                return
            fn, args, kwargs = item
            try:
                fn(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - one bad call must not end the writer
                _log.warning("%s: %s failed (%s: %s)", self.name,
                             getattr(fn, "__name__", repr(fn)), type(err).__name__,
                             first_line(err, 200))
            finally:
                with cond:
                    if cond is self._cond:
                        self.done += 1
                    cond.notify_all()


_live: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    """Whatever is still queued when the interpreter exits is written first (bounded wait)."""
    try:
        for writer in list(_live):
            left = writer.close()
            if left:
                _log.warning("%s: %d queued call(s) not written at exit: no call finished for "
                             "%.0f s", writer.name, left, writer.stall_timeout_s)
    except KeyboardInterrupt:  # a second Ctrl-C while exiting: the user chose not to wait
        pass
