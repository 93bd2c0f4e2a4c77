"""The staged columns of one run (``DIR/.staging.partial``): what staging.py's read pass keeps of
every record batch, so that its later passes (the cut-offs, the splits, the fit, the write)
walk the same blocks without reading the inputs again.

Each column is raw rows appended to a file of this run's (no header, no fsync: it lives only as
long as the run), memory-mapped once complete; files are named by index, not by column (column
names are data). Every block keeps its origin (file, first row, rows), so an error in a later
pass still names the file and line.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Optional

import numpy as np
import pyarrow as pa

from dlrm_dist.data.columnar import read
from dlrm_dist.data.columnar.locate import LINE_FIELD, ORIGIN_FIRST, ORIGIN_PATH
from dlrm_dist.data.npy import Tally
from dlrm_dist.features.schema import FeatureSchema, SparseFeature
from dlrm_dist.fileio import disk_full

STAGING = ".staging.partial"


@dataclass
class Block:
    """One record batch as read: where it came from, where its rows and values are staged."""

    path: str
    first: int  # its first row's index in the file
    rows: int
    row0: int  # its first row's index over all inputs
    values: dict[str, int] = field(default_factory=dict)  # multi-hot feature -> its first flat value


@dataclass
class Arrays:
    """A block's staged arrays: numeric columns as read, sparse values (finished ids; a vocabulary
    value's id among its table's distinct texts, or criteo_tsv's integer as it is), bag lengths
    (None: one value per row) and the encoded labels."""

    numbers: dict[str, np.ndarray]
    values: dict[str, np.ndarray]  # (a text vocabulary's: int32)
    lengths: dict[str, Optional[np.ndarray]]
    labels: np.ndarray


def _floats(x: np.ndarray) -> pa.Array:
    """A staged numeric column as Arrow float64, NaN as null (``pa.array(from_pandas=True)``'s
    result, its validity bitmap built by numpy: 10x faster)."""
    x = np.ascontiguousarray(x, np.float64)
    missing = np.isnan(x)
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None
    return pa.Array.from_buffers(pa.float64(), len(x), [validity, pa.py_buffer(x)])


def numeric_batch(block: Block, numbers: dict[str, np.ndarray]) -> pa.RecordBatch:
    """The numeric reads of a block as read.py gave them (NaN back to null), with its origin: the
    encoder's functions (labels, split, dense) run on it as on the batch read from the file."""
    arrays = [pa.array(np.asarray(x, np.int64)) if c == LINE_FIELD else _floats(x)
              for c, x in numbers.items()]  # (criteo_tsv's rows: their lines too, under their own name)
    names = [c if c == LINE_FIELD else read.field_name(read.NUM, c) for c in numbers]
    meta = {ORIGIN_PATH: block.path, ORIGIN_FIRST: str(block.first)}
    if not arrays:
        return pa.RecordBatch.from_arrays([pa.nulls(block.rows)], names=["_"]).replace_schema_metadata(meta)
    return pa.RecordBatch.from_arrays(arrays, names=names).replace_schema_metadata(meta)


class Column:
    """One staged column: raw rows appended to a file of this run's (no header, no fsync: the
    file lives only as long as the run), memory-mapped once complete."""

    def __init__(self, path: Path, dtype: type, tally: Tally) -> None:
        self.path, self.dtype, self.tally, self.rows = path, np.dtype(dtype), tally, 0
        self.file = open(path, "wb")

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.size:
            with disk_full(self.path, self.tally.bytes + rows.nbytes):
                self.file.write(memoryview(rows).cast("B"))
            self.tally.add(rows.nbytes)
        self.rows += len(rows)

    def close(self) -> np.ndarray:
        with disk_full(self.path, self.tally.bytes):
            self.file.close()
        return np.memmap(self.path, self.dtype, "r", shape=(self.rows,)) if self.rows else np.zeros(0, self.dtype)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()


class Stage:
    """The staged columns of one run under ``DIR/.staging.partial`` (files by index, not by name:
    column names are data)."""

    def __init__(self, out: Path, schema: FeatureSchema, interned: Collection[str] = ()) -> None:
        """The stage of ``schema``'s columns; ``interned``: the vocabulary tables of texts (their
        features' values staged as kernels.Interner's int32 ids; any other sparse value as int64)."""
        self.dir = out / STAGING
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir()
        self.schema = schema
        # criteo_tsv rows carry their lines (pseudo-days are cut by line; errors name the line)
        self.columns = read.numeric_columns(schema) + ([LINE_FIELD] if schema.input.format == "criteo_tsv" else [])
        tally = Tally()
        self.numbers = {c: Column(self.dir / f"num{i}", np.float64, tally) for i, c in enumerate(self.columns)}
        self.labels = Column(self.dir / "labels", np.float32, tally)
        self.values, self.lengths = {}, {}
        for j, f in enumerate(schema.sparse):
            dtype = np.int32 if f.kind == "vocab" and f.table in interned else np.int64
            self.values[f.name] = Column(self.dir / f"sparse{j}", dtype, tally)
            if f.multi_hot:
                self.lengths[f.name] = Column(self.dir / f"lengths{j}", np.int64, tally)
        self.blocks: list[Block] = []
        self.mapped: dict[str, dict[str, np.ndarray]] = {}  # numbers/values/lengths -> name -> column, once complete
        self.splits = Column(self.dir / "splits", np.int8, tally)  # every row's split, once the cut-offs are known
        self.split_of: Optional[np.ndarray] = None

    def append(self, block: Block, arrays: Arrays) -> None:
        for c, x in arrays.numbers.items():
            self.numbers[c].append(x)
        self.labels.append(arrays.labels)
        for name, v in arrays.values.items():
            if name in self.lengths:
                block.values[name] = self.values[name].rows
                self.lengths[name].append(arrays.lengths[name])
            self.values[name].append(v)
        self.blocks.append(block)

    def close(self) -> None:
        self.mapped = {kind: {name: column.close() for name, column in group.items()}
                       for kind, group in (("numbers", self.numbers), ("values", self.values),
                                           ("lengths", self.lengths), ("labels", {"": self.labels}))}

    def close_splits(self) -> None:
        self.split_of = self.splits.close()

    @staticmethod
    def _rows(block: Block) -> slice:
        return slice(block.row0, block.row0 + block.rows)

    def numbers_of(self, block: Block) -> dict[str, np.ndarray]:
        return {c: self.mapped["numbers"][c][self._rows(block)] for c in self.columns}

    def labels_of(self, block: Block) -> np.ndarray:
        return self.mapped["labels"][""][self._rows(block)]

    def split(self, block: Block) -> np.ndarray:
        """A block's rows' splits (``close_splits`` first)."""
        return np.asarray(self.split_of[self._rows(block)])

    def sparse(self, block: Block, f: SparseFeature) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """A block's staged values of ``f`` and its rows' bag lengths (None: one value per row)."""
        if not f.multi_hot:
            return self.mapped["values"][f.name][self._rows(block)], None
        lengths = np.asarray(self.mapped["lengths"][f.name][self._rows(block)])
        v0 = block.values[f.name]
        return self.mapped["values"][f.name][v0: v0 + int(lengths.sum())], lengths

    def times(self) -> np.ndarray:
        return np.asarray(self.mapped["numbers"][self.schema.split.column])

    def remove(self) -> None:
        for w in [*self.numbers.values(), *self.values.values(), *self.lengths.values(), self.labels, self.splits]:
            w.abort()
        self.mapped = {}
        shutil.rmtree(self.dir, ignore_errors=True)
