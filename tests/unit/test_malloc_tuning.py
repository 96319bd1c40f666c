"""glibc tuning: a trim gives freed heap memory back to the system (RSS is what a Pi's OOM killer sees)."""

from __future__ import annotations

import subprocess
import sys

from gateway import malloc_tuning

PROBE = """
import sys
from gateway import malloc_tuning

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

blocks = [bytearray(65536) for _ in range(300)]  # ~19 MB from the heap (below the mmap threshold)
pin = bytearray(65536)  # allocated after them: the freed blocks are not at the heap's top
before = rss_mb()
del blocks
freed = rss_mb()
malloc_tuning.trim()
print(before, freed, rss_mb())
"""


def test_trim_returns_freed_heap_memory() -> None:
    if malloc_tuning._libc() is None:  # not glibc (musl, macOS): documented as doing nothing
        assert malloc_tuning.trim() is False
        return
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    before, freed, trimmed = (float(x) for x in out.split())
    assert freed > before - 5, "glibc returned the blocks by itself: this test would prove nothing"
    assert trimmed < freed - 15, f"trim gave back only {freed - trimmed:.1f} MB"


def test_limit_arenas_is_accepted_where_glibc_offers_it() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from gateway import malloc_tuning; print(malloc_tuning.limit_arenas(1))"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out.strip() == str(malloc_tuning._libc() is not None)  # not glibc: documented as doing nothing
