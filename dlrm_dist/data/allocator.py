"""The C allocator's settings for a preprocessing process (``keep_freed_memory``).

Preprocessing allocates and frees arrays of megabytes per record batch on several threads. By
default glibc gives each thread an arena of its own and hands freed memory above a threshold
back to the kernel, so the next batch's arrays are fresh pages: each one a page fault, zeroed by
the kernel. On the 2M-row benchmark (benchmarks/preprocess_columnar.py) that was about 1.4 GB of
fresh pages and a third of the run's CPU time in the kernel. With one arena and freed memory
kept for reuse, the same run touches about a fifth less fresh memory; the peak RSS stays about
the same (what is kept is reused, not added).

Only the preprocessing CLI calls this, first thing (arenas are chosen at a thread's first
allocation): it changes the whole process's allocator, which a library imported into someone
else's process must not do. On a C library without ``mallopt`` (not glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's malloc.h parameter numbers
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_SETTINGS = (
    (_M_ARENA_MAX, 1),  # one arena: memory a thread frees is reused by the others (their batches alternate)
    (_M_MMAP_THRESHOLD, 32 << 20),  # blocks under 32 MB (a batch's arrays) from the heap, not fresh mappings
    (_M_TRIM_THRESHOLD, (1 << 31) - 1),  # freed heap memory kept for the next batch, not handed back
)


def keep_freed_memory() -> bool:
    """Sets glibc's allocator to reuse freed memory (one arena, batch-sized blocks from the heap,
    no trimming); False where there is no glibc ``mallopt`` (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)  # (mallopt returns 1 on success)
