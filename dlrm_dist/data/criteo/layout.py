"""The on-disk layout of preprocessed Criteo data, compatible with TorchRec's.

    DIR/day_{i}_dense.npy    float32 (N, 13)  log(1 + max(x, 0)), missing = 0
    DIR/day_{i}_sparse.npy   int32 (N, 26)    ids (hashed or vocabulary-mapped); int64 if raw
    DIR/day_{i}_labels.npy   int32 (N, 1)
    DIR/day_{i}.done.json    written last: the day is complete (rows, skipped, where it ended)
    DIR/meta.json            dataset, id mode, table sizes, days and their roles

Days are written under ``.partial`` names and renamed when complete, so a killed run
leaves no file that looks finished. TorchRec's ``BinaryCriteoUtils`` writes the same three
files per day (without meta.json): such a directory loads as is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

NUM_DENSE, NUM_SPARSE = 13, 26
KINDS = ("dense", "sparse", "labels")
META = "meta.json"
_HEADER_BYTES = 128  # room for any shape; rewritten in place at close


def day_file(directory: Path, day: int, kind: str) -> Path:
    return Path(directory) / f"day_{day}_{kind}.npy"


def done_file(directory: Path, day: int) -> Path:
    return Path(directory) / f"day_{day}.done.json"


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
        rows = np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1, *self.row_shape)
        self.file.write(memoryview(rows).cast("B"))  # the array's own buffer: no copy
        self.rows += len(rows)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(self._header())
        self.file.close()


class DayWriter:
    """The three arrays of one output day, published atomically by ``finish``."""

    def __init__(self, directory: Path, day: int, sparse_dtype: np.dtype) -> None:
        self.directory, self.day = Path(directory), day
        self.paths = {k: day_file(directory, day, k).with_suffix(".npy.partial") for k in KINDS}
        self.writers = {
            "dense": NpyWriter(self.paths["dense"], np.float32, (NUM_DENSE,)),
            "sparse": NpyWriter(self.paths["sparse"], sparse_dtype, (NUM_SPARSE,)),
            "labels": NpyWriter(self.paths["labels"], np.int32, (1,)),
        }
        self.skipped = 0

    def append(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> None:
        self.writers["dense"].append(dense)
        self.writers["sparse"].append(sparse)
        self.writers["labels"].append(labels)

    @property
    def rows(self) -> int:
        return self.writers["labels"].rows

    def finish(self, info: dict[str, Any]) -> dict[str, Any]:
        for w in self.writers.values():
            w.close()
        for kind, p in self.paths.items():
            os.replace(p, day_file(self.directory, self.day, kind))
        record = {"day": self.day, "rows": self.rows, "skipped": self.skipped, **info}
        done_file(self.directory, self.day).write_text(json.dumps(record, sort_keys=True))
        return record


def completed_day(directory: Path, day: int) -> Optional[dict[str, Any]]:
    """The done record of a complete day, or None (and any half-written files removed)."""
    marker = done_file(directory, day)
    if marker.is_file() and all(day_file(directory, day, k).is_file() for k in KINDS):
        return json.loads(marker.read_text())
    for kind in KINDS:
        for p in (day_file(directory, day, kind), day_file(directory, day, kind).with_suffix(".npy.partial")):
            p.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    return None


def read_meta(directory: Path) -> Optional[dict[str, Any]]:
    p = Path(directory) / META
    return json.loads(p.read_text()) if p.is_file() else None


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (Path(directory) / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


