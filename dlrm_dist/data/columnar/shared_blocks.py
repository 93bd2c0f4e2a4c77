"""Shared-memory blocks: how criteo_tsv.py's worker processes hand their arrays to the reading process.

A worker writes a chunk's arrays into a POSIX shared-memory block (``new_block``, ``pooled_block``,
or ``pack`` to copy finished arrays) and returns only its name and layout; the reading process maps
it (``unpack``) without a copy. Blocks are named ``dlrm_dist_<reading pid>_<read>_<block>``, so that
a read removes the blocks still in flight when it stops, and a later read removes those of a read
whose process was killed (``remove_stale_blocks``). This module owns the blocks' names, creation,
mapping, recycling and removal; what goes into them is criteo_tsv.py's (which imports this module,
never the other way round).
"""

from __future__ import annotations

import _posixshmem
import fcntl
import mmap
import os
import queue
import re
import secrets
import weakref
from collections import deque
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any, Optional

import numpy as np

from dlrm_dist.data.errors import PreprocessError

SHM_DIR = Path("/dev/shm")  # where Linux keeps POSIX shared memory: a stopped read's blocks are removed there
# dlrm_dist_<reading pid>_<read>_<block>, and each read's lock file dlrm_dist_<reading pid>_<read>_lock
_ENTRY = re.compile(r"(dlrm_dist_(\d+)_[0-9a-f]+_)(?:[0-9a-f]+|lock)")
LOCK = "lock"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts: signalling it is refused, not unknown)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hold_read_lock(prefix: str, shm_dir: Path = SHM_DIR) -> int:
    """Takes the read ``prefix``'s lock (an flock on ``<prefix>lock`` in ``shm_dir``) and returns its
    descriptor, held until closed (the forked workers share it). Other reads' sweeps leave the blocks
    of a read whose lock is held: an flock is seen from every pid namespace that shares /dev/shm,
    where the pid in a block's name may mean another process. The file is locked under a temporary
    name and renamed, so a sweep never finds it unlocked."""
    temporary = shm_dir / f"{prefix}{secrets.token_hex(4)}.new"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(temporary, shm_dir / (prefix + LOCK))
    return fd


def _in_use(shm_dir: Path, prefix: str, pid: int) -> bool:
    """Whether read ``prefix`` may still use its blocks: its lock is held (or is another user's); a
    read without a lock file (an older version's) by whether its pid is alive."""
    try:
        fd = os.open(shm_dir / (prefix + LOCK), os.O_RDWR)
    except FileNotFoundError:
        return _alive(pid)
    except PermissionError:  # another user's read: theirs to remove
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (releases the probe's lock, if it got it)


def remove_stale_blocks(shm_dir: Path = SHM_DIR) -> int:
    """Unlinks the blocks (and lock files) of reads that are gone; how many blocks. A read removes its
    own when it ends, also on an error, but a killed one (SIGKILL, the OOM killer) cannot: its blocks
    would hold their memory until reboot. A read whose lock is held (this one's included), or
    another user's, is left alone."""
    reads: dict[str, list[str]] = {}
    for entry in shm_dir.glob("dlrm_dist_*"):
        match = _ENTRY.fullmatch(entry.name)
        if match is not None and int(match.group(2)) != os.getpid():
            reads.setdefault(match.group(1), []).append(entry.name)
    removed = 0
    for prefix, names in reads.items():
        if _in_use(shm_dir, prefix, int(_ENTRY.fullmatch(names[0]).group(2))):
            continue
        for name in sorted(names, key=lambda n: n.endswith(LOCK)):  # (the lock last: a sweep meanwhile still sees it)
            try:
                _posixshmem.shm_unlink("/" + name)
                removed += not name.endswith(LOCK)
            except (FileNotFoundError, PermissionError):  # removed meanwhile; another user's (sticky /dev/shm)
                pass
    return removed


def pack(arrays: list[np.ndarray], prefix: str) -> tuple[str, list[tuple[str, tuple[int, ...]]]]:
    """Copies ``arrays`` into a new shared-memory block (in a worker); the main process owns it.
    Blocks are named after the read, so that those still in flight when it stops can be removed."""
    shm = shared_memory.SharedMemory(name=prefix + secrets.token_hex(8), create=True,
                                     size=max(1, sum(a.nbytes for a in arrays)))
    offset = 0
    for a in arrays:
        np.ndarray(a.shape, a.dtype, buffer=shm.buf, offset=offset)[...] = a
        offset += a.nbytes
    resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001 - the main process unlinks it
    shm.close()
    return shm.name, [(a.dtype.str, a.shape) for a in arrays]


def _nbytes(specs: list[tuple[str, tuple[int, ...]]]) -> int:
    return max(1, sum(np.dtype(d).itemsize * int(np.prod(shape, dtype=np.int64)) for d, shape in specs))


def new_block(specs: list[tuple[str, tuple[int, ...]]], prefix: str) -> tuple[str, list[np.ndarray]]:
    """A new shared-memory block (in a worker) holding arrays of ``specs``, for a kernel to write
    into: (its name, the arrays). Its pages are allocated as they are written, so an array sized
    for the most rows a chunk could hold costs only the rows it gets. The main process unlinks it."""
    name, mapped = create(_nbytes(specs), prefix)
    return name, views(mapped, specs)


def create(size: int, prefix: str) -> tuple[str, mmap.mmap]:
    name = prefix + secrets.token_hex(8)
    fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=0o600)
    try:
        os.ftruncate(fd, size)
        return name, mmap.mmap(fd, size)
    finally:
        os.close(fd)


def mapped_block(name: str) -> mmap.mmap:
    try:
        fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
    except FileNotFoundError:
        raise PreprocessError(f"shared-memory block /dev/shm/{name.lstrip('/')} of this read vanished: another "
                              "process removed it (a tool cleaning /dev/shm?); run the job again") from None
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


# Recycled blocks (the fused path). A new block's pages are allocated, zeroed and mapped as the
# kernel first writes them: measured at ~0.2 us of a worker's CPU per row, a fifth of the fused
# parse. So the main process hands a block back (its name on the ``free`` queue) once no array of
# it is left (weakref.finalize on its mapping: a consumer that keeps a batch keeps its block),
# and a worker writes the next chunk into it, through the mapping it kept.
_WORKER_MAPS: dict[str, mmap.mmap] = {}  # a worker's mappings of recycled blocks, kept from use to use


def pooled_block(specs: list[tuple[str, tuple[int, ...]]], prefix: str, free: Any
                 ) -> tuple[str, list[np.ndarray]]:
    """A block for ``specs`` (a recycled block's): one the main process handed back, else a new one."""
    try:
        name = free.get_nowait()
    except queue.Empty:
        name, mapped = create(_nbytes(specs), prefix)
    else:
        mapped = _WORKER_MAPS.get(name) or mapped_block(name)
    _WORKER_MAPS[name] = mapped
    return name, views(mapped, specs)


class Recycler:
    """Hands blocks back to the workers while the read runs (and not after: the queue is closed then).

    Called from weakref callbacks, which may run inside the garbage collector, in the middle of any
    code of this thread: the callback only appends to a deque (no lock), and the reading loop puts
    the names on the queue (``drain``), whose put takes a lock a callback must not take again."""

    def __init__(self, free: Any) -> None:
        self.free, self.open, self.names = free, True, deque()

    def __call__(self, name: str) -> None:
        self.names.append(name)

    def drain(self) -> None:
        while self.open and self.names:
            self.free.put(self.names.popleft())


def views(mapped: mmap.mmap, specs: list[tuple[str, tuple[int, ...]]]) -> list[np.ndarray]:
    """The arrays of ``specs`` laid end to end in ``mapped`` (they keep the mapping alive)."""
    out, offset = [], 0
    for dtype, shape in specs:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        out.append(np.frombuffer(mapped, dt, count, offset).reshape(shape))
        offset += count * dt.itemsize
    return out


def unpack(name: str, specs: list[tuple[str, tuple[int, ...]]], recycle: Optional[Recycler] = None
            ) -> list[np.ndarray]:
    """The arrays of a block, without a copy: the block is mapped and the mapping lives as long as
    the arrays do (numpy holds the mmap; the last array frees it). Its name is removed at once,
    or with ``recycle`` handed back to the workers when the last array goes."""
    try:
        mapped = mapped_block(name)
    finally:
        if recycle is None:
            _posixshmem.shm_unlink("/" + name.lstrip("/"))
    if recycle is not None:
        weakref.finalize(mapped, recycle, name)
    return views(mapped, specs)


def unlink(name: str) -> None:
    """Removes block ``name`` (its memory is freed once no process maps it)."""
    _posixshmem.shm_unlink("/" + name.lstrip("/"))
