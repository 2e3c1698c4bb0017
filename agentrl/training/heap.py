"""Keep freed memory in the process heap, so large tensors do not page-fault on every step.

glibc hands an allocation above its mmap threshold (128 KiB at first, rising with use) to
its own `mmap`, and gives the top of the heap back to the OS once more than twice that
threshold is free. A CPU training process allocates and frees activations, logits and KV
caches of a few MiB to a few tens of MiB at every step, so by default each step maps fresh
pages and faults them in again: on the search demo that is 10 to 20% of a rollout's time
(benchmarks/heap.py, docs/generation.md). PyTorch's CPU tuning guides swap in jemalloc or
tcmalloc for this; glibc's own `mallopt` gets the same effect without a preloaded library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: Allocations up to this size come from the heap (glibc refuses more than 32 MiB).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory the heap keeps before giving any back to the OS.
TRIM_THRESHOLD = 2**30
#: Extra memory requested whenever the heap grows, so it grows in few large steps.
TOP_PAD = 64 * 2**20


def retain_freed_memory() -> bool:
    """Tune glibc's allocator for this process; False where it is not glibc (macOS, musl).

    Costs resident memory: up to `TRIM_THRESHOLD` of freed memory stays with the process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
