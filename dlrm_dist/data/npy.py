"""Streaming .npy writing (rows appended without knowing the final count) and checked reading.

A writer's file is its caller's ``.partial`` name: a full disk is a DiskFullError naming the
device, the file and how much this run had written (``Tally``), and ``abort`` closes and removes
the file, so a failed run leaves nothing of its own behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dlrm_dist.data.errors import DataError
from dlrm_dist.fileio import disk_full

_HEADER_BYTES = 128  # room for any shape; rewritten in place at close
WRITEBACK_EVERY = 2 << 20  # bytes a writer hands over before it asks the kernel to start writing them


def _sync_file_range() -> Optional[Callable[..., int]]:
    fn = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)  # Linux only
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Asks the kernel to start writing bytes [offset, offset + length) of ``fd`` to disk, without
    waiting (sync_file_range(SYNC_FILE_RANGE_WRITE); nothing where there is none). Otherwise dirty
    pages wait in the page cache for close()'s fsync, which then waits for all of them at once."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, 2)  # advisory: an error changes nothing fsync does


@dataclass
class Tally:
    """Bytes written by every writer of one run: the "needed about" figure of a full disk (its
    writers may append from several threads: staging.py writes its columns at once)."""

    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n


class NpyWriter:
    """Appends rows to a .npy file without knowing the final row count (bounded memory)."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...], tally: Optional[Tally] = None,
                 durable: bool = True) -> None:
        self.path, self.dtype, self.row_shape = Path(path), np.dtype(dtype), row_shape
        self.tally = tally if tally is not None else Tally()
        self.durable = durable  # False: a run's scratch file, removed before the run ends (no writeback, no fsync)
        self.rows = 0
        self.written = self.kicked = 0  # bytes handed to the file; of those, whose writeback was started
        with disk_full(self.path, _HEADER_BYTES):
            self.file = open(self.path, "wb")
            self._write(self._header())

    def _header(self) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
             "shape": (self.rows, *self.row_shape)}
        text = repr(d).encode("latin1")
        magic = np.lib.format.magic(1, 0)
        pad = _HEADER_BYTES - len(magic) - 2 - len(text) - 1
        return magic + (_HEADER_BYTES - len(magic) - 2).to_bytes(2, "little") + text + b" " * pad + b"\n"

    def _write(self, data: bytes | memoryview) -> None:
        with disk_full(self.path, self.tally.bytes + len(data)):
            self.file.write(data)
        self.tally.add(len(data))
        self.written += len(data)
        if self.durable and self.written - self.kicked >= WRITEBACK_EVERY:  # the disk works meanwhile
            start_writeback(self.file.fileno(), self.kicked, self.written - self.kicked)
            self.kicked = self.written

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        rows = rows.reshape(len(rows), *self.row_shape)  # (not -1: rows of width 0 are legal)
        if rows.size:  # memoryview cannot cast an empty buffer (no rows, or rows of width 0)
            self._write(memoryview(rows).cast("B"))  # the array's own buffer: no copy
        self.rows += len(rows)

    def close(self) -> None:
        """Completes the file (header with the final shape) and, unless it is scratch, makes it
        durable before any rename."""
        # Buffered bytes reach the disk at flush: ENOSPC can surface here, not at write().
        with disk_full(self.path, self.tally.bytes):
            self.file.flush()
            self.file.seek(0)
            self.file.write(self._header())
            self.file.flush()
            if self.durable:
                os.fsync(self.file.fileno())
        self.file.close()

    def abort(self) -> None:
        """Closes and removes the file (a failed run's own partial output)."""
        with contextlib.suppress(OSError):
            self.file.close()  # its flush may fail again on a full disk: the file goes anyway
        self.path.unlink(missing_ok=True)


def open_checked(path: Path, dtype: np.dtype | tuple[np.dtype, ...], shape: tuple[Optional[int], ...]) -> np.ndarray:
    """Memory-maps ``path``, checking dtype and shape (None = any length); every error names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e}); truncated or corrupt: preprocess again") from None
    allowed = tuple(np.dtype(d) for d in (dtype if isinstance(dtype, tuple) else (dtype,)))
    if arr.dtype not in allowed:
        raise DataError(f"{path}: dtype {arr.dtype}, expected {' or '.join(map(str, allowed))}")
    if len(arr.shape) != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise DataError(f"{path}: shape {arr.shape}, expected {want}")
    return arr
