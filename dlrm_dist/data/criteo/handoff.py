"""Handing a worker's output arrays to the main process through shared memory.

Pickling tens of megabytes per chunk through a pipe made the (single) writing process the
bottleneck; a shared-memory block costs one copy in the worker and one write in the main
process. The worker creates the block and detaches; the main process unlinks it after use.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np


@dataclass(frozen=True)
class Packed:
    name: str
    specs: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype, shape) per array


def pack(arrays: list[np.ndarray]) -> Packed:
    """Copies ``arrays`` into a new shared-memory block (called in a worker)."""
    size = max(1, sum(a.nbytes for a in arrays))
    shm = shared_memory.SharedMemory(create=True, size=size)
    offset = 0
    for a in arrays:
        np.ndarray(a.shape, a.dtype, buffer=shm.buf, offset=offset)[...] = a
        offset += a.nbytes
    # The main process owns the block from here: stop this process's tracker from removing it.
    resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
    shm.close()
    return Packed(shm.name, tuple((a.dtype.str, a.shape) for a in arrays))


class Unpacked:
    """The arrays of a Packed block (main process); ``release()`` frees the block."""

    def __init__(self, packed: Packed) -> None:
        self.shm = shared_memory.SharedMemory(name=packed.name)
        self.arrays = []
        offset = 0
        for dtype, shape in packed.specs:
            a = np.ndarray(shape, np.dtype(dtype), buffer=self.shm.buf, offset=offset)
            self.arrays.append(a)
            offset += a.nbytes

    def release(self) -> None:
        self.arrays = []
        self.shm.close()
        self.shm.unlink()
