"""The fused criteo_tsv path: a schema's parse+encode plan for the compiled kernel, and its output.

When the schema's steps are only those the compiled kernel runs (``fused_plan``: labels 0/1,
dense chains of clip/log1p/standardize/minmax, ``int_modulo`` ids, split by day or at random;
``unfusable`` says why not), criteo_tsv.py's workers parse and encode in one pass
(tsv_kernel.fused_chunk, via ``encode_fused``) straight into the shared-memory block the main
process writes from (laid out as ``fused_specs`` says; ``fused_encoded`` turns it into the
arrays ``Encoded.from_arrays`` takes). The plan is computed BY the encoder: each dense chain's
results for the counts 0..65535 and for a missing count come from encode.dense_matrix, and the
counts outside that table go through it too, so the output is the encoder's to the byte
(tests/data/test_criteo_fused.py); a chunk it cannot encode (an error) is encoded again the
generic way, which names the line.

This module owns the plan and the per-chunk encoding only; criteo_tsv.py (the reader: byte
ranges, workers, shared memory) imports it, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from dlrm_dist.data.columnar import encode, layout
from dlrm_dist.data.columnar.columns import NUM, TEXT
from dlrm_dist.data.columnar.locate import LINE_FIELD, ORIGIN_FIRST, ORIGIN_PATH
from dlrm_dist.data.columnar.tsv_kernel import (NUM_DENSE, TABLE_SIZE, FusedChunk, FusedOutput, FusedPlan,
                                                fused_chunk, row_capacity)
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import FeatureSchema


# -- the plan ---------------------------------------------------------------------------------------
# Dense steps that act on each value alone (so a table of their results per count is exact). A
# step not listed here (a new kind) keeps the schema on the generic encoder until it is added.
_ELEMENTWISE = frozenset({"none", "clip", "log1p", "standardize", "minmax"})


@dataclass(frozen=True)
class Fused:
    """A schema's fused plan, and where each id feature's ids are in the kernel's output."""

    schema: FeatureSchema
    plan: FusedPlan
    id_slots: dict[str, tuple[int, int]]  # feature -> (0: the int32 ids, 1: the int64 ones; row)


def unfusable(schema: FeatureSchema, positions: dict[tuple[str, str], int]) -> Optional[str]:
    """Why the fused kernel cannot run ``schema`` (None: it can, with the encoder's results)."""
    label = schema.label
    if schema.split.by not in ("day", "random"):
        return f"split by {schema.split.by} reads its column in the main process"
    if label.categorical or label.threshold is not None or positions.get((NUM, label.column)) != 0:
        return "the label is not the 0/1 label field"
    for d in schema.dense:
        if not set(d.transform) <= _ELEMENTWISE or (d.fitted and d.scale is None):
            return f"dense feature {d.name!r} has the chain {list(d.transform)}"
    for f in schema.sparse:
        if not f.integer_ids or f.multi_hot or f.prefix is not None:
            return f"sparse feature {f.name!r} is not a single int_modulo id of the whole value"
    return None


def _dense_batch(columns: dict[str, tuple[np.ndarray, Optional[np.ndarray]]], length: int) -> pa.RecordBatch:
    """``length`` rows of the numeric reads the encoder's dense step takes: (values, missing) per column."""
    names = [f"{NUM}:{c}" for c in columns] + [LINE_FIELD]
    arrays = [pa.array(v, mask=m) for v, m in columns.values()] + [pa.array(np.zeros(length, np.int64))]
    return pa.RecordBatch.from_arrays(arrays, names=names).replace_schema_metadata(
        {ORIGIN_PATH: "(the fused plan's table)", ORIGIN_FIRST: "0"})


def fused_plan(schema: FeatureSchema, positions: dict[tuple[str, str], int]) -> Optional[Fused]:
    """The fused kernel's plan for ``schema`` (the encoder's own results: its dense chains on the
    counts 0..TABLE_SIZE-1 and on a missing one), or None when the generic encoder must run
    (``unfusable``, or a chain that fails on those values: the generic path names the line)."""

    if unfusable(schema, positions) is not None:
        return None
    missing = np.zeros(TABLE_SIZE + 1, bool)
    missing[-1] = True
    counts = np.arange(TABLE_SIZE + 1, dtype=np.float64)
    try:
        results = encode.dense_matrix(_dense_batch({d.column: (counts, missing) for d in schema.dense},
                                                            TABLE_SIZE + 1), schema)
    except (PreprocessError, SchemaError):
        return None
    dense_field = np.array([positions[(NUM, d.column)] - 1 for d in schema.dense], np.int64)
    tables: dict[bytes, int] = {}  # one table per distinct chain (Criteo's 13 share one)
    table_of = np.array([tables.setdefault(results[:-1, j].tobytes(), len(tables)) for j in range(len(schema.dense))],
                        np.int64)
    wide = [layout.id_dtype(schema.id_range(f)) != np.int32 for f in schema.sparse]
    order = sorted(range(len(schema.sparse)), key=lambda k: wide[k])  # the int32 ones first
    num_int32 = wide.count(False)
    plan = FusedPlan(
        dense_field=dense_field,
        dense_first=np.array([list(dense_field).index(f) == j for j, f in enumerate(dense_field)], np.bool_),
        table_of=table_of,
        tables=np.stack([np.frombuffer(t, np.float32) for t in tables]) if tables else np.zeros((0, TABLE_SIZE), np.float32),
        fills=np.ascontiguousarray(results[-1], np.float32),
        id_field=np.array([positions[(TEXT, schema.sparse[k].column)] - 1 - NUM_DENSE for k in order], np.int64),
        id_modulo=(modulo := np.array([schema.id_range(schema.sparse[k]) for k in order], np.int64)),
        id_inverse=1.0 / modulo,
        num_int32=num_int32)
    slots = {schema.sparse[k].name: (0, i) if i < num_int32 else (1, i - num_int32) for i, k in enumerate(order)}
    return Fused(schema, plan, slots)


# -- one chunk by the plan -----------------------------------------------------------------------
_NO_LENGTHS = np.zeros(0, np.int64)  # (Encoded.arrays' entry for a single-hot feature)


def fused_specs(fused: Fused, cap: int) -> list[tuple[str, tuple[int, ...]]]:
    """The block of one chunk: line of each row, int64 ids, labels, dense, int32 ids (8-byte ones first)."""
    p = fused.plan
    return [("<i8", (cap,)), ("<i8", (len(p.id_field) - p.num_int32, cap)), ("<f4", (cap,)),
            ("<f4", (cap, len(p.dense_field))), ("<i4", (p.num_int32, cap))]


def _encode_outliers(fused: Fused, found: FusedChunk, dense: np.ndarray) -> None:
    """The dense slots the tables left (counts outside them): the encoder's chains on those counts."""
    if not len(found.over_row):
        return
    fields = fused.plan.dense_field
    at = {int(f): np.flatnonzero(found.over_field == f) for f in np.unique(found.over_field)}
    length = max(len(ix) for ix in at.values())
    columns = {}
    for j, d in enumerate(fused.schema.dense):
        values = np.zeros(length)  # (0: a count every chain takes, the plan's table has it)
        ix = at.get(int(fields[j]))
        if ix is not None:
            values[: len(ix)] = found.over_value[ix]
        columns[d.column] = (values, None)
    results = encode.dense_matrix(_dense_batch(columns, length), fused.schema)
    for j in range(len(fields)):
        ix = at.get(int(fields[j]))
        if ix is not None:
            dense[found.over_row[ix], j] = results[: len(ix), j]


def encode_fused(data: bytes, fused: Fused, arrays: Optional[list[np.ndarray]] = None
                 ) -> tuple[FusedChunk, list[np.ndarray]]:
    """Parses and encodes whole lines by the fused plan into ``arrays`` (laid out as
    ``fused_specs`` says; new ones when None). ``rows`` is -1 when the chain of a count outside
    the tables fails: the caller encodes the chunk again the generic way, which names the line."""
    if arrays is None:
        arrays = [np.empty(shape, dtype) for dtype, shape in fused_specs(fused, row_capacity(len(data)))]
    rows, ids64, labels, dense, ids32 = arrays
    found = fused_chunk(data, fused.plan, FusedOutput(labels, dense, ids32, ids64, rows))
    try:
        _encode_outliers(fused, found, dense)
    except (PreprocessError, SchemaError):
        found.rows = -1
    return found, arrays


def fused_encoded(fused: Fused, rows: int, arrays: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(line of each valid row in its chunk, the flat arrays ``Encoded.from_arrays`` takes) of a
    fused chunk's ``rows`` valid rows."""
    lines, ids64, labels, dense, ids32 = arrays
    flat = [labels[:rows], dense[:rows]]
    for f in fused.schema.sparse:
        wide, k = fused.id_slots[f.name]
        flat += [(ids64 if wide else ids32)[k, :rows], _NO_LENGTHS]
    return lines[:rows], flat
