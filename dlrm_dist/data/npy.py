"""Streaming .npy writing (rows appended without knowing the final count) and checked reading."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from dlrm_dist.data.errors import DataError

_HEADER_BYTES = 128  # room for any shape; rewritten in place at close


class NpyWriter:
    """Appends rows to a .npy file without knowing the final row count (bounded memory)."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.row_shape = Path(path), np.dtype(dtype), row_shape
        self.rows = 0
        self.file = open(self.path, "wb")
        self.file.write(self._header())

    def _header(self) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
             "shape": (self.rows, *self.row_shape)}
        text = repr(d).encode("latin1")
        magic = np.lib.format.magic(1, 0)
        pad = _HEADER_BYTES - len(magic) - 2 - len(text) - 1
        return magic + (_HEADER_BYTES - len(magic) - 2).to_bytes(2, "little") + text + b" " * pad + b"\n"

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        rows = rows.reshape(len(rows), *self.row_shape)  # (not -1: rows of width 0 are legal)
        if rows.size:  # memoryview cannot cast an empty buffer (no rows, or rows of width 0)
            self.file.write(memoryview(rows).cast("B"))  # the array's own buffer: no copy
        self.rows += len(rows)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(self._header())
        self.file.close()


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
