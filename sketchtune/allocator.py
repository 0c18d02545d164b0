"""glibc malloc under the trainer: big buffers kept in the heap, handed back between trials."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys

__all__ = ["MALLOC_ENV", "MALLOC_SWITCH", "heap_in_use", "release_memory", "tune_malloc"]

_log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_INT_MAX = 2**31 - 1  # mallopt takes an int

# What tune_malloc sets, as the environment variables glibc reads at start-up would set it
# (benchmarks/allocator.py measures both ways). By default glibc serves every block over
# 128 KiB-32 MiB with its own mmap and unmaps it on free, and trims the heap top beyond
# 128 KiB: a 224 px batch's activations are freed and faulted in again every step (66 M
# minor page faults and 18 % kernel time in one epoch of test_resnet). Kept in the heap,
# the next step reuses them. The cost: the process keeps its peak heap until
# `release_memory` (between trials) hands it back.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(_INT_MAX),  # no block the trainer makes is mmapped alone
    "MALLOC_TRIM_THRESHOLD_": str(_INT_MAX),  # free memory at the heap top stays (2 GiB)
    "MALLOC_TOP_PAD_": str(2**30),  # grow the heap 1 GiB at a time (address space, not RSS)
}

# Set to "default" to leave glibc's own settings (benchmarks compare against it).
MALLOC_SWITCH = "SKETCHTUNE_MALLOC"


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and other C libraries: their malloc has no such knobs
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def _other_allocator() -> bool:
    # A preloaded jemalloc/tcmalloc serves malloc itself, and MALLOC_*_ variables were
    # already read by glibc at start-up: either way the user chose, so leave it.
    return ("malloc" in os.environ.get("LD_PRELOAD", "")
            or any(k in os.environ for k in MALLOC_ENV))


def tune_malloc() -> bool:
    """Apply MALLOC_ENV through mallopt, in this process, now; True when it did.

    mallopt changes the same settings the MALLOC_*_ variables set at start-up, so no
    re-exec is needed and it works in a Ray worker, the train CLI and a test alike. Forked
    DataLoader workers inherit it. A no-op off glibc, under a preloaded allocator, when the
    user set MALLOC_*_ themselves, or with SKETCHTUNE_MALLOC=default.
    """
    libc = _glibc()
    if libc is None or _other_allocator() or os.environ.get(MALLOC_SWITCH) == "default":
        return False
    ok = all(libc.mallopt(p, int(MALLOC_ENV[k])) == 1 for p, k in (
        (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
        (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),
        (_M_TOP_PAD, "MALLOC_TOP_PAD_"),
    ))
    if not ok:
        _log.debug("mallopt refused a setting; glibc's defaults stay in part")
    return ok


def release_memory() -> None:
    """Collect garbage and return free heap pages to the OS (glibc's malloc_trim).

    A reused Ray worker runs one trial after another in one process: without this its
    resident size keeps the previous trial's peak (and more, as arenas fragment).
    """
    gc.collect()
    libc = _glibc()
    if libc is not None and "malloc" not in os.environ.get("LD_PRELOAD", ""):
        libc.malloc_trim(0)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def heap_in_use() -> dict[str, int] | None:
    """glibc's mallinfo2: bytes in the heap (`arena`), in lone mmapped blocks (`hblkhd`),
    allocated (`uordblks`) and free (`fordblks`); None off glibc 2.33+."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    mi = libc.mallinfo2()
    return {n: int(getattr(mi, n)) for n in ("arena", "hblkhd", "uordblks", "fordblks")}
