"""Turning record batches into model inputs: labels, splits, dense transforms, ids.

Vectorised over whole record batches (numpy and pyarrow compute); nothing loops over rows.

- split: ``random`` draws a uniform per row from (seed, row number over all inputs) with a
  64-bit mix, so the split does not depend on batch sizes; ``time`` compares the time
  column to cut-offs found from the fractions in a first pass.
- hashing: FNV-1a 64 over the value's UTF-8 text (stable across runs and machines).
- vocabulary: value -> oov_buckets + its position in the vocabulary (most frequent first);
  unseen or rare values -> an OOV bucket (hashed among them when there are several).
- missing values: dense -> the feature's ``fill``; sparse -> an empty bag for multi-hot,
  otherwise id 0 (identity/hash) or an OOV bucket (vocab).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrm_dist.data.columnar.read import PreprocessError
from dlrm_dist.data.hashing import U64, splitmix64, unit_uniform
from dlrm_dist.features.schema import DenseFeature, FeatureSchema, SparseFeature

_FNV_OFFSET, _FNV_PRIME = U64(0xCBF29CE484222325), U64(0x100000001B3)


def fnv1a(strings: pa.Array) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes (null -> hash of the empty string)."""
    arr = pc.cast(strings, pa.large_string()) if strings.type != pa.large_string() else strings
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    arr = pc.fill_null(arr, "")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(arr), _FNV_OFFSET, dtype=U64)
    active = np.arange(len(arr))
    k = 0
    with np.errstate(over="ignore"):
        while (active := active[lengths[active] > k]).size:  # one step per character position
            h[active] = (h[active] ^ data[starts[active] + k].astype(U64)) * _FNV_PRIME
            k += 1
    return h


# -- labels and splits -----------------------------------------------------------------------
def labels_of(batch: pa.RecordBatch, schema: FeatureSchema, where: str, first_row: int) -> np.ndarray:
    """0/1 labels; a missing or non-binary label is an error naming the row."""
    col = batch.column(schema.label.column)
    values = col.to_numpy(zero_copy_only=False)
    missing = np.flatnonzero(np.isnan(values))
    if missing.size:
        raise PreprocessError(f"{where} data row {first_row + missing[0] + 1}: label column "
                              f"{schema.label.column!r} is empty ({missing.size} such rows in this block)")
    if schema.label.threshold is not None:
        return (values >= schema.label.threshold).astype(np.float32)
    bad = np.flatnonzero((values != 0) & (values != 1))
    if bad.size:
        raise PreprocessError(
            f"{where} data row {first_row + bad[0] + 1}: label {float(values[bad[0]])} in column {schema.label.column!r} "
            "is not 0 or 1; give label.threshold (e.g. threshold = 4 makes value >= 4 a positive)")
    return values.astype(np.float32)


def split_of(batch: pa.RecordBatch, schema: FeatureSchema, row0: int, cutoffs: Optional[tuple[float, float]]) -> np.ndarray:
    """0 (train), 1 (val) or 2 (test) per row; ``row0`` is the first row's number over all inputs."""
    s = schema.split
    if s.by == "time":
        t = batch.column(s.column).to_numpy(zero_copy_only=False)
        if np.isnan(t).any():
            raise PreprocessError(f"time column {s.column!r} has empty cells: every row needs a time")
        return (t >= cutoffs[0]).astype(np.int8) + (t >= cutoffs[1]).astype(np.int8)
    rows = np.arange(row0, row0 + batch.num_rows, dtype=np.int64)
    z = splitmix64(rows.astype(U64) ^ splitmix64(np.array([s.seed], U64))[0])
    u = unit_uniform(z)
    f = s.fractions
    return (u >= f[0]).astype(np.int8) + (u >= f[0] + f[1]).astype(np.int8)


# -- dense -------------------------------------------------------------------------------------
def dense_raw(batch: pa.RecordBatch, d: DenseFeature) -> np.ndarray:
    """The column before any fitted step: filled, clipped and log1p'd as the chain says."""
    x = batch.column(d.column).to_numpy(zero_copy_only=False).astype(np.float64)
    x = np.where(np.isnan(x), d.fill, x)
    for t in d.transform:
        if t == "clip":
            x = np.clip(x, d.clip[0], d.clip[1])
        elif t == "log1p":
            if (x <= -1).any():
                raise PreprocessError(f"dense feature {d.name!r}: log1p of a value <= -1 "
                                      f"({x[x <= -1][0]}); add clip = [0, ...] before it")
            x = np.log1p(x)
    return x


def dense_matrix(batch: pa.RecordBatch, schema: FeatureSchema) -> np.ndarray:
    cols = []
    for d in schema.dense:
        x = dense_raw(batch, d)
        if d.fitted:
            shift, divisor = d.scale
            x = (x - shift) / divisor
        cols.append(x.astype(np.float32))
    return np.stack(cols, axis=1) if cols else np.zeros((batch.num_rows, 0), np.float32)


# -- sparse ------------------------------------------------------------------------------------
@dataclass
class Bags:
    """A feature's values for a block: flat text values and per-row counts (None: one per row)."""

    values: pa.Array
    lengths: Optional[np.ndarray]


def bags_of(batch: pa.RecordBatch, f: SparseFeature) -> Bags:
    col = batch.column(f.column)
    if f.prefix is not None:
        col = pc.utf8_slice_codeunits(col, 0, f.prefix)
    if not f.multi_hot:
        return Bags(col, None)
    lists = pc.split_pattern(pc.fill_null(col, ""), f.delimiter)
    flat = pc.list_flatten(lists)
    keep = pc.not_equal(flat, "")  # "a||b" and empty cells give empty pieces: not values
    counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    keep_np = keep.to_numpy(zero_copy_only=False)
    if not keep_np.all():  # recount per row without the empty pieces
        row_of = np.repeat(np.arange(len(counts)), counts)
        counts = np.bincount(row_of[keep_np], minlength=len(counts)).astype(np.int64)
        flat = pc.filter(flat, keep)
    return Bags(flat, counts)


def encode_ids(values: pa.Array, f: SparseFeature, rows: int, vocab: Optional[pa.Array], where: str) -> np.ndarray:
    """Text values -> int64 ids in [0, rows)."""
    if f.kind == "hash":
        return (fnv1a(values) % U64(rows)).astype(np.int64)
    if f.kind == "vocab":
        index = pc.index_in(values, value_set=vocab).to_numpy(zero_copy_only=False)
        unseen = np.isnan(index) if index.dtype.kind == "f" else np.zeros(len(index), bool)
        ids = np.where(unseen, 0, np.nan_to_num(index)).astype(np.int64) + f.oov_buckets
        if unseen.any():
            oov = (fnv1a(pc.filter(values, pa.array(unseen))) % U64(f.oov_buckets)).astype(np.int64)
            ids[unseen] = oov
        return ids
    filled = pc.fill_null(values, "0")
    try:
        ids = pc.cast(filled, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        text = [v for v in filled.to_pylist() if not v.lstrip("-").isdigit()]
        raise PreprocessError(f"{where}: identity feature {f.name!r} (column {f.column!r}) holds "
                              f"{text[0]!r}, not an integer id") from None
    out = np.flatnonzero((ids < 0) | (ids >= rows))
    if out.size:
        raise PreprocessError(f"{where}: identity feature {f.name!r} has id {ids[out[0]]} outside "
                              f"[0, {rows}) (buckets = {rows}); raise buckets or use kind = \"vocab\"")
    return ids
