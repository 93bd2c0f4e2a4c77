"""The on-disk layout of preprocessed Criteo data, compatible with TorchRec's.

    DIR/day_{i}_dense.npy    float32 (N, 13)  log(1 + max(x, 0)), missing = 0
    DIR/day_{i}_sparse.npy   int32 (N, 26)    ids (hashed or vocabulary-mapped); int64 if raw
    DIR/day_{i}_labels.npy   int32 (N, 1)
    DIR/day_{i}.done.json    written last: the day is complete (rows, skipped, where it ended)
    DIR/meta.json            dataset, id mode, table sizes, days and their roles

Days are written under ``.partial`` names and renamed when complete, so a killed run
leaves no file that looks finished; a failed one (a full disk, an error) removes its day's
``.partial`` files and keeps the days already complete. The JSON records are written
atomically; a damaged one is a DataError naming it. TorchRec's ``BinaryCriteoUtils`` writes the same three
files per day (without meta.json): such a directory loads as is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from dlrm_dist.data.errors import DataError
from dlrm_dist.data.jobrecord import START_OVER, read_record
from dlrm_dist.data.npy import NpyWriter, Tally
from dlrm_dist.fileio import atomic_write_json, inside
from dlrm_dist.features.builtin import CRITEO_NUM_DENSE, CRITEO_NUM_SPARSE

NUM_DENSE, NUM_SPARSE = CRITEO_NUM_DENSE, CRITEO_NUM_SPARSE
KINDS = ("dense", "sparse", "labels")
META = "meta.json"


def day_file(directory: Path, day: int, kind: str) -> Path:
    return inside(directory, f"day_{int(day)}_{kind}.npy")


def done_file(directory: Path, day: int) -> Path:
    return inside(directory, f"day_{int(day)}.done.json")


class DayWriter:
    """The three arrays of one output day, published atomically by ``finish``."""

    def __init__(self, directory: Path, day: int, sparse_dtype: np.dtype, tally: Optional[Tally] = None) -> None:
        self.directory, self.day = Path(directory), day
        self.paths = {k: day_file(directory, day, k).with_suffix(".npy.partial") for k in KINDS}
        shapes = {"dense": (np.float32, (NUM_DENSE,)), "sparse": (sparse_dtype, (NUM_SPARSE,)), "labels": (np.int32, (1,))}
        self.writers: dict[str, NpyWriter] = {}
        try:
            for kind, (dtype, row_shape) in shapes.items():
                self.writers[kind] = NpyWriter(self.paths[kind], dtype, row_shape, tally)
        except BaseException:
            self.abort()
            raise
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
        atomic_write_json(done_file(self.directory, self.day), record, sort_keys=True)
        return record

    def abort(self) -> None:
        """Removes this day's partial files (a failed run); complete days are not touched."""
        for w in self.writers.values():
            w.abort()
        for p in self.paths.values():
            p.unlink(missing_ok=True)


def completed_day(directory: Path, day: int) -> Optional[dict[str, Any]]:
    """The done record of a complete day, or None (and any half-written files removed)."""
    marker = done_file(directory, day)
    if marker.is_file() and all(day_file(directory, day, k).is_file() for k in KINDS):
        record = read_record(marker, dict, START_OVER)
        if not all(isinstance(record.get(k), int) for k in ("rows", "skipped", "resume_byte", "resume_line")):
            raise DataError(f"{marker}: damaged (no rows, skipped and resume position); {START_OVER}")
        return record
    for kind in KINDS:
        for p in (day_file(directory, day, kind), day_file(directory, day, kind).with_suffix(".npy.partial")):
            p.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    return None


def read_meta(directory: Path) -> Optional[dict[str, Any]]:
    """meta.json, or None if absent; a damaged one is a DataError naming it."""
    return read_record(Path(directory) / META, dict, "preprocess again (--overwrite)")


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    atomic_write_json(Path(directory) / META, meta, indent=1, sort_keys=True)


