"""The C allocator's settings for a preprocessing process (``keep_freed_memory``).

Preprocessing allocates and frees arrays of megabytes per record batch on several threads. By
default glibc gives each thread an arena of its own and hands freed memory above a threshold
back to the kernel, so the next batch's arrays are fresh pages: each one a page fault, zeroed by
the kernel. On the 2M-row benchmark (benchmarks/preprocess_columnar.py) that was about 1.4 GB of
fresh pages and a third of the run's CPU time in the kernel. With one arena and freed memory
kept for reuse, the same run touches about a fifth less fresh memory; the peak RSS stays about
the same (what is kept is reused, not added).

Only the ``dlrm-data preprocess`` command's process calls this (``data_main.entry``), first thing
(arenas are chosen at a thread's first allocation): it changes the whole process's allocator for
the rest of its life, which a library called in someone else's process (``data_main.main``,
``preprocess()``) must not do. A setting the user gave in glibc's environment variable
(``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) is left as given.
On a C library without ``mallopt`` (not glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's malloc.h parameter numbers, each with the environment variable that sets it at start-up
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_SETTINGS = (
    # one arena: memory a thread frees is reused by the others (their batches alternate)
    (_M_ARENA_MAX, 1, "MALLOC_ARENA_MAX"),
    # blocks under 32 MB (a batch's arrays) from the heap, not fresh mappings
    (_M_MMAP_THRESHOLD, 32 << 20, "MALLOC_MMAP_THRESHOLD_"),
    # freed heap memory kept for the next batch, not handed back
    (_M_TRIM_THRESHOLD, (1 << 31) - 1, "MALLOC_TRIM_THRESHOLD_"),
)


def keep_freed_memory() -> bool:
    """Sets glibc's allocator to reuse freed memory (one arena, batch-sized blocks from the heap,
    no trimming), each setting the environment does not give; True when every one it tried was
    taken (False: none was, where there is no glibc ``mallopt``, or some was refused)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # (the process's own C library: no search for it)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    taken = [mallopt(param, value) == 1 for param, value, env in _SETTINGS if env not in os.environ]
    return all(taken)  # (mallopt returns 1 on success; each is tried, whatever the others did)
