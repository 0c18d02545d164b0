"""glibc malloc tuning: big blocks stay in the heap once tuned; the switch and preloads leave it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sketchtune.allocator import heap_in_use

pytestmark = pytest.mark.skipif(heap_in_use() is None, reason="needs glibc 2.33+ (mallinfo2)")

# A fresh interpreter (the tuning is per process): tune, malloc 200 MB, say where it went.
PROBE = """
import ctypes, json
from sketchtune.allocator import heap_in_use, tune_malloc
tuned = tune_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
p = libc.malloc(200 << 20)
print(json.dumps({"tuned": tuned, **heap_in_use()}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "SKETCHTUNE_MALLOC")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout)


def test_tune_malloc_keeps_a_big_block_in_the_heap():
    got = probe()
    assert got["tuned"] is True
    assert got["hblkhd"] < 200 << 20 <= got["arena"]  # not an mmap of its own


def test_tune_malloc_switched_off_leaves_glibc_defaults():
    got = probe(SKETCHTUNE_MALLOC="default")
    assert got["tuned"] is False
    assert got["hblkhd"] >= 200 << 20  # glibc's default: mmapped alone, unmapped on free


def test_tune_malloc_leaves_the_users_own_malloc_env():
    got = probe(MALLOC_TOP_PAD_="0")
    assert got["tuned"] is False and got["hblkhd"] >= 200 << 20
