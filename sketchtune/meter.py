"""A loop's progress: a tqdm bar of images (img/s, ETA) and, for logs, a line every so often."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from tqdm.auto import tqdm

__all__ = ["Meter", "clock"]

_log = logging.getLogger(__name__)


class Meter:
    """One loop's images counted: a tqdm bar (img/s, ETA) for a person at a terminal, and a
    log line every `log_every_s` seconds for a log nobody watches live (a Ray trial's)."""

    def __init__(self, loader: Iterable, desc: str, progress: bool,
                 log_every_s: float | None) -> None:
        # Any iterable of batches works (a benchmark passes an islice of a loader); without a
        # length there is no total, so the bar counts and the log line has no ETA.
        self.desc, self.every = desc, log_every_s
        self.batches = len(loader) if hasattr(loader, "__len__") else None
        bs = getattr(loader, "batch_size", None) or 1
        dataset = getattr(loader, "dataset", None)
        self.total = None if self.batches is None else \
            min(self.batches * bs, len(dataset)) if dataset is not None else self.batches * bs
        self.bar = tqdm(total=self.total, desc=desc, unit="img", disable=not progress,
                        leave=False, dynamic_ncols=True)
        self.t0 = self.last = time.perf_counter()
        self.n = self.i = 0

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.n += n
        self.i += 1
        now = time.perf_counter()
        if self.every is None or now - self.last < self.every or self.i == self.batches:
            return
        self.last = now
        rate = self.n / (now - self.t0)
        eta = (self.total - self.n) / rate if rate > 0 and self.total is not None else math.inf
        _log.info("%s: batch %d/%s, %.1f img/s, ETA %s", self.desc, self.i,
                  "?" if self.batches is None else self.batches, rate, clock(eta))

    def close(self) -> None:
        # Show the final count before the bar goes: tqdm skips redraws closer than 0.1 s
        # apart, so a fast loop would otherwise end on a stale count.
        if not self.bar.disable:
            self.bar.refresh()
        self.bar.close()


def clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
