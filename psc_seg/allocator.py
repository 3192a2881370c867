"""Process-wide allocator setting for fast CPU passes over large tensors.

glibc serves every allocation above 32 MiB (a 12-channel float32 feature map of 100^3 voxels
is 48 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when the tensor dies, so each
forward or training pass faults in, and the kernel zeroes, those pages again: a 7 -> 12
(3,1,1) conv at 102^3 took 23 ms instead of 4.7 ms (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (glibc malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in this process for reuse: large blocks come from the heap
    instead of one ``mmap`` each, and the heap is not trimmed.

    Whole-network passes on CPU get faster (``benchmarks/blocks.py --malloc``: UNet inference
    1.05-1.46x, training steps up to 1.14x). The price: the process keeps its peak memory
    until it exits. The ``psc-seg`` command applies it (a command's process ends with its
    work), and so do predict's dask worker processes; a library caller opts in by calling it.
    It covers the main thread's allocations and, in other threads, those below 64 MiB (glibc
    still maps larger blocks of a thread's own arena). Returns whether it was applied: not
    with another C library, nor when the environment variable ``PSC_SEG_MALLOC`` is
    ``system``."""
    if os.environ.get("PSC_SEG_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (musl has mallopt but other semantics)
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False
