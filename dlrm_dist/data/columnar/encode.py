"""Turning record batches into model inputs: labels, splits, dense transforms, ids.

Vectorised over whole record batches (numpy and pyarrow compute); nothing loops over rows.

- split: ``random`` draws a uniform per row from (seed, row number over all inputs) with a
  64-bit mix, so the split does not depend on batch sizes; ``time`` compares the time
  column to cut-offs found from the fractions in a first pass; ``day`` finds each row's
  day (``Days``): train before the last day, HOLDOUT in it (halved into val and test by
  the writer once the day's valid rows are known).
- hashing: ``fnv1a``, FNV-1a 64 over the value's UTF-8 text (stable across runs and
  machines); ``int_modulo``, the integer value modulo buckets (MLPerf's and TorchRec's:
  integer columns as they are, text tokens read in base 16), missing -> 0. Kind managed
  takes the same hashes modulo 2**63 - 1 (raw ids: the model's remapper maps them to rows).
- vocabulary: value -> oov_buckets + its position in the vocabulary (most frequent first,
  or ascending by value); unseen or rare values -> an OOV bucket (hashed among them when
  there are several).
- missing values: dense -> the feature's ``fill``; sparse -> an empty bag for multi-hot,
  otherwise id 0 (identity/hash) or an OOV bucket (vocab).
- every dense value written is a finite float32: a fill, a log1p of a value <= -1, or a
  chain whose result leaves float32's range is an error naming the feature, file, line,
  cell and step (columns.py has already refused non-finite cells).

Errors name the line of the offending row: each batch carries its origin (locate.origin).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrm_dist.data.columnar import columns, layout, locate
from dlrm_dist.data.columnar.kernels import fnv1a  # noqa: F401 (the encoder's hash, used below)
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.data.hashing import U64, splitmix64, unit_uniform
from dlrm_dist.features.schema import DenseFeature, FeatureSchema, SparseFeature

# fnv1a: FNV-1a 64 of each string's UTF-8 bytes (null -> hash of the empty string), compiled
# (kernels.py: one pass over the bytes, ~50x the numpy loop over character positions).


_HEX_DIGIT = np.full(256, -1, dtype=np.int64)
for _k, _c in enumerate(b"0123456789abcdef"):
    _HEX_DIGIT[_c] = _HEX_DIGIT[ord(chr(_c).upper())] = _k
_EXACT_MODULO = 2**59  # (v * 16 + 15) stays below 2**64 for v < modulo: reduce at every digit


def _hex_values(tokens: pa.Array, modulo: int) -> tuple[np.ndarray, Optional[int]]:
    """(int(tok, 16) % modulo per token (null or empty -> 0), index of the first bad token or None),
    one vectorised step per character position."""
    arr = pc.cast(tokens, pa.large_string()) if tokens.type != pa.large_string() else tokens
    arr = pc.fill_null(pc.utf8_trim_whitespace(arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr), "")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    if modulo > _EXACT_MODULO and (long := np.flatnonzero(lengths > 15)).size:
        return np.zeros(0, np.int64), int(long[0])  # beyond 60 bits with a modulo past 2**59: not exact here
    v, m = np.zeros(len(arr), dtype=U64), U64(modulo)
    active, k = np.arange(len(arr)), 0
    while (active := active[lengths[active] > k]).size:
        d = _HEX_DIGIT[data[starts[active] + k]]
        if (d < 0).any():
            return v.astype(np.int64), int(active[np.flatnonzero(d < 0)[0]])
        v[active] = v[active] * U64(16) + d.astype(U64)
        if modulo <= _EXACT_MODULO:
            v[active] %= m
        k += 1
    return (v % m).astype(np.int64), None


def int_modulo(batch: pa.RecordBatch, schema: FeatureSchema, f: SparseFeature, bags: "Bags", rows: int) -> np.ndarray:
    """MLPerf's ids: an integer column's value modulo ``rows``, a text token read in base 16;
    missing -> 0. A token that is not base-16 digits is an error naming its line."""
    values = bags.values
    if pa.types.is_integer(values.type):
        v = (pc.fill_null(values, 0) if values.null_count else values).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        m = np.int64(rows)
        return v - (v // m) * m  # == v % m (floored), several times faster: numpy divides by a scalar quickly
    ids, bad = _hex_values(values, rows)
    if bad is not None:
        raise PreprocessError(
            f"{locate.where(batch, schema, bags.row_of(bad))}: sparse feature {f.name!r} (column {f.column!r}) holds "
            f"{values[bad].as_py()!r}, not a base-16 integer (at most 15 digits when buckets > 2**59; hash = \"int_modulo\" reads text "
            "tokens in base 16, as MLPerf does); fix the data, or use hash = \"fnv1a\" for other text")
    return ids


# -- labels and splits -----------------------------------------------------------------------
def _filled(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with nulls as NaN, missing mask): columns.py has refused every non-finite cell,
    so NaN here means missing and nothing else."""
    if not values.null_count:
        return np.array(values.to_numpy(zero_copy_only=False), dtype=np.float64), np.zeros(len(values), bool)
    missing = values.is_null().to_numpy(zero_copy_only=False)
    if values.type == pa.float64() and not isinstance(values, pa.ChunkedArray):  # one copy of the buffer, not two
        x = np.frombuffer(values.buffers()[1], np.float64, len(values), values.offset * 8).copy()
        x[missing] = np.nan
        return x, missing
    return np.array(values.to_numpy(zero_copy_only=False), dtype=np.float64), missing  # (a writable copy)


def labels_of(batch: pa.RecordBatch, schema: FeatureSchema) -> np.ndarray:
    """0/1 labels; a missing label, a numeric one not 0/1 (without a threshold) or a categorical one
    in neither list (when ``negative`` is given) is an error naming the file, line and value.

    A categorical label (``positive``) is read as text (columns.text_columns) and compared, whitespace
    trimmed, with the listed texts: a number in a Parquet/JSON column by its text as Arrow writes it
    (1 -> "1", 0.5 -> "0.5", true -> "true"). A bad label's line comes from the batch's origin.
    """
    label = schema.label
    raw = columns.texts(batch, label.column) if label.categorical else columns.numbers(batch, label.column)
    if raw.null_count:
        missing = raw.is_null().to_numpy(zero_copy_only=False)
        i = int(np.flatnonzero(missing)[0])
        raise PreprocessError(f"{locate.where(batch, schema, i)}: label column {label.column!r} is empty "
                              f"({int(missing.sum())} such rows in this block); every row needs a label")
    if label.categorical:
        text = pc.utf8_trim_whitespace(raw if pa.types.is_string(raw.type) else pc.cast(raw, pa.string()))
        positive = pc.is_in(text, value_set=pa.array(label.positive, pa.string())).to_numpy(zero_copy_only=False)
        if label.negative is not None:
            known = positive | pc.is_in(text, value_set=pa.array(label.negative, pa.string())).to_numpy(
                zero_copy_only=False)
            if not known.all():
                i = int(np.flatnonzero(~known)[0])
                raise PreprocessError(
                    f"{locate.where(batch, schema, i)}: label {text[i].as_py()!r} in column {label.column!r} is in "
                    f"neither label.positive {list(label.positive)} nor label.negative {list(label.negative)}; "
                    "list it in one of them (or drop negative: then every value not in positive is 0)")
        return positive.astype(np.float32)
    values, _ = _filled(raw)
    if label.threshold is not None:
        return (values >= label.threshold).astype(np.float32)
    bad = np.flatnonzero((values != 0) & (values != 1))
    if bad.size:
        i = int(bad[0])
        raise PreprocessError(
            f"{locate.where(batch, schema, i)}: label {float(values[i])} in column {label.column!r} is not 0 or 1; "
            "give label.threshold (e.g. threshold = 4 makes value >= 4 a positive), or for a label of categories "
            f"label = {{ column = {label.column!r}, positive = [...] }} (texts such as \"4\" that are 1)")
    return values.astype(np.float32)


def times_of(batch: pa.RecordBatch, schema: FeatureSchema) -> np.ndarray:
    """The time column; an empty cell is an error naming the file and line."""
    column = schema.split.column
    t, missing = _filled(columns.numbers(batch, column))
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise PreprocessError(f"{locate.where(batch, schema, i)}: time column {column!r} is empty; every row "
                              "needs a time to be split by time")
    return t


HOLDOUT = 3  # split by day: a row of the last day (val or test, by its place among that day's rows)


@dataclass(frozen=True)
class Days:
    """The day of each row, for ``split.by = "day"``: the inputs' lines cut into ``days`` equal
    pseudo-days (bounds total * d // days over the lines of all inputs, in input order,
    malformed lines counted), or one day per input file."""

    files: tuple[str, ...]
    first_lines: tuple[int, ...] = ()  # the line (over all inputs) each file starts at
    bounds: Optional[tuple[int, ...]] = None  # days + 1 line bounds; None: one day per file

    @classmethod
    def cut(cls, files: list[Path], lines: Optional[list[int]], days: Optional[int]) -> "Days":
        names = tuple(map(str, files))
        if days is None:
            return cls(names)
        total, firsts = sum(lines), tuple(int(x) for x in np.cumsum([0, *lines[:-1]]))
        return cls(names, firsts, tuple(total * d // days for d in range(days + 1)))

    @property
    def count(self) -> int:
        return len(self.files) if self.bounds is None else len(self.bounds) - 1

    def of(self, batch: pa.RecordBatch) -> np.ndarray:
        file = self.files.index(str(locate.origin(batch)[0]))
        if self.bounds is None:
            return np.full(batch.num_rows, file, np.int64)
        lines = batch.column(locate.LINE_FIELD).to_numpy()
        counted = (self.first_lines[file + 1] if file + 1 < len(self.first_lines) else self.bounds[-1]) - \
            self.first_lines[file]
        if len(lines) and (last := int(lines.max())) >= counted:  # its rows would land in another day
            raise PreprocessError(f"{self.files[file]}: line {last + 1:,} is past the {counted:,} lines "
                                  "counted for the pseudo-days before the read: the file grew while being read; "
                                  "preprocess a file that no longer changes")
        return np.searchsorted(np.asarray(self.bounds), lines + self.first_lines[file], side="right") - 1


def split_of(batch: pa.RecordBatch, schema: FeatureSchema, row0: int, cutoffs: Optional[tuple[float, float]],
             days: Optional[Days] = None) -> np.ndarray:
    """0 (train), 1 (val), 2 (test) or HOLDOUT (the last day) per row; ``row0`` is the first row's
    number over all inputs."""
    s = schema.split
    if s.by == "day":
        return np.where(days.of(batch) == days.count - 1, HOLDOUT, 0).astype(np.int8)
    if s.by == "time":
        t = times_of(batch, schema)
        return (t >= cutoffs[0]).astype(np.int8) + (t >= cutoffs[1]).astype(np.int8)
    rows = np.arange(row0, row0 + batch.num_rows, dtype=np.int64)
    z = splitmix64(rows.astype(U64) ^ splitmix64(np.array([s.seed], U64))[0])
    u = unit_uniform(z)
    f = s.fractions
    return (u >= f[0]).astype(np.int8) + (u >= f[0] + f[1]).astype(np.int8)


# -- dense -------------------------------------------------------------------------------------
def _raw_cell(batch: pa.RecordBatch, d: DenseFeature, i: int) -> str:
    v = columns.numbers(batch, d.column)[i].as_py()
    return "an empty cell (fill = {})".format(d.fill) if v is None else repr(v)


def dense_raw(batch: pa.RecordBatch, d: DenseFeature, schema: FeatureSchema) -> np.ndarray:
    """The column before any fitted step: filled, clipped and log1p'd as the chain says; every
    value finite (a step that would make one non-finite is an error naming the line)."""
    x, missing = _filled(columns.numbers(batch, d.column))
    # The cells are finite (columns.py refuses others) and so is the fill (the schema's rule): only
    # the steps below can leave the finite numbers, and each is checked where it can.
    x[missing] = d.fill
    for t in d.transform:  # in place: this runs over every value of every dense column
        if t == "clip":
            np.clip(x, d.clip[0], d.clip[1], out=x)
        elif t == "log1p":
            if x.size and x.min() <= -1:
                i = int(np.flatnonzero(x <= -1)[0])
                raise PreprocessError(
                    f"{locate.where(batch, schema, i)}: dense feature {d.name!r} (column {d.column!r}): log1p of "
                    f"{x[i]} (from {_raw_cell(batch, d, i)}) is not finite (log1p needs values > -1); "
                    "add clip = [0, ...] before it, or fix the data")
            np.log1p(x, out=x)
    return x


def _check_finite(batch: pa.RecordBatch, schema: FeatureSchema, d: DenseFeature, x: np.ndarray, step: str) -> None:
    if np.isfinite(x).all():
        return
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        i = int(bad[0])
        raise PreprocessError(
            f"{locate.where(batch, schema, i)}: dense feature {d.name!r} (column {d.column!r}): {step} makes "
            f"{_raw_cell(batch, d, i)} the non-finite value {x[i]}; dense values must be finite float32 numbers "
            f"(|x| < {np.finfo(np.float32).max:.3g}): clip or log1p large values, give a finite fill")


def dense_matrix(batch: pa.RecordBatch, schema: FeatureSchema) -> np.ndarray:
    """The (rows, dense) float32 matrix; a value that is not a finite float32 is an error naming
    the feature, the line, the cell and the step that made it so."""
    out = np.empty((batch.num_rows, len(schema.dense)), np.float32)
    for j, d in enumerate(schema.dense):
        x = dense_raw(batch, d, schema)
        if d.fitted:
            shift, divisor = d.scale
            x -= shift
            x /= divisor
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        _check_finite(batch, schema, d, x32, f"the transform chain {list(d.transform) or ['none']}")
        out[:, j] = x32
    return out


# -- sparse ------------------------------------------------------------------------------------
@dataclass
class Bags:
    """A feature's values for a block: flat text values and per-row counts (None: one per row)."""

    values: pa.Array
    lengths: Optional[np.ndarray]

    def row_of(self, value_index: int) -> int:
        """The block row a flat value belongs to."""
        if self.lengths is None:
            return value_index
        return int(np.searchsorted(np.cumsum(self.lengths), value_index, side="right"))


def bags_of(batch: pa.RecordBatch, f: SparseFeature) -> Bags:
    """A feature's text values: one per row, or a multi-hot cell's non-empty pieces and their count
    per row; with ``prefix``, each value's first characters (of each piece, not of the cell)."""
    col = columns.texts(batch, f.column)
    if not f.multi_hot:
        return Bags(col if f.prefix is None else pc.utf8_slice_codeunits(col, 0, f.prefix), None)
    lists = pc.split_pattern(pc.fill_null(col, ""), f.delimiter)
    flat = pc.list_flatten(lists)
    keep = pc.not_equal(flat, "")  # "a||b" and empty cells give empty pieces: not values
    counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    keep_np = keep.to_numpy(zero_copy_only=False)
    if not keep_np.all():  # recount per row without the empty pieces
        row_of = np.repeat(np.arange(len(counts)), counts)
        counts = np.bincount(row_of[keep_np], minlength=len(counts)).astype(np.int64)
        flat = pc.filter(flat, keep)
    return Bags(flat if f.prefix is None else pc.utf8_slice_codeunits(flat, 0, f.prefix), counts)  # (each value's)


def encode_ids(batch: pa.RecordBatch, schema: FeatureSchema, f: SparseFeature, bags: Bags,
               vocab: Optional[pa.Array]) -> np.ndarray:
    """A feature's text values -> int64 ids in [0, its table's rows); a bad identity id names the line."""
    values, rows = bags.values, schema.id_range(f)  # managed: raw ids, which the model's remapper maps to rows
    if f.integer_ids:
        return int_modulo(batch, schema, f, bags, rows)
    if f.kind in ("hash", "managed"):
        return (fnv1a(values) % U64(rows)).astype(np.int64)
    if f.kind == "vocab":
        index = pc.index_in(values, value_set=vocab).to_numpy(zero_copy_only=False)
        unseen = np.isnan(index) if index.dtype.kind == "f" else np.zeros(len(index), bool)
        ids = np.where(unseen, 0, np.nan_to_num(index)).astype(np.int64) + f.oov_buckets
        if unseen.any():
            oov = (fnv1a(pc.filter(values, pa.array(unseen))) % U64(f.oov_buckets)).astype(np.int64)
            ids[unseen] = oov
        return ids
    return _identity_ids(batch, schema, f, bags, rows)


def _as_int(values: pa.Array) -> pa.Array:
    """Identity ids as int64: integers as they are, a text's decimal digits (Arrow's cast also takes
    "0x10" as 16, its one form besides decimal digits, where a dense cell refuses it)."""
    if pa.types.is_integer(values.type):
        return pc.cast(values, pa.int64())
    values = pc.utf8_trim_whitespace(values)
    if pc.any(pc.match_substring(values, "x", ignore_case=True)).as_py():  # (a third of a regex's cost)
        raise pa.ArrowInvalid("an identity id is a decimal integer")
    return pc.cast(values, pa.int64())


def _identity_ids(batch: pa.RecordBatch, schema: FeatureSchema, f: SparseFeature, bags: Bags, rows: int) -> np.ndarray:
    filled = pc.fill_null(bags.values, 0 if pa.types.is_integer(bags.values.type) else "0")
    try:
        ids = _as_int(filled).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        i = columns.first_failing(filled, _as_int)
        raise PreprocessError(f"{locate.where(batch, schema, bags.row_of(i))}: identity feature {f.name!r} (column "
                              f"{f.column!r}) holds {filled[i].as_py()!r}, not an integer id") from None
    out = np.flatnonzero((ids < 0) | (ids >= rows))
    if out.size:
        i = int(out[0])
        raise PreprocessError(f"{locate.where(batch, schema, bags.row_of(i))}: identity feature {f.name!r} has id "
                              f"{ids[i]} outside [0, {rows}) (buckets = {rows}); raise buckets or use kind = \"vocab\"")
    return ids


# -- a whole block --------------------------------------------------------------------------------
@dataclass
class Encoded:
    """A block's model inputs: what the writer appends (the split aside)."""

    labels: np.ndarray  # float32 (n,)
    dense: np.ndarray  # float32 (n, num_dense)
    ids: dict[str, tuple[np.ndarray, Optional[np.ndarray]]]  # feature -> (ids, bag lengths or None)

    def arrays(self) -> list[np.ndarray]:
        """Flat, for a trip through shared memory (``from_arrays`` undoes it for the same schema)."""
        out = [self.labels, self.dense]
        for values, lengths in self.ids.values():
            out += [values, lengths if lengths is not None else np.zeros(0, np.int64)]
        return out

    @classmethod
    def from_arrays(cls, schema: FeatureSchema, arrays: list[np.ndarray]) -> "Encoded":
        it = iter(arrays[2:])
        ids = {}
        for f in schema.sparse:
            values, lengths = next(it), next(it)
            ids[f.name] = (values, lengths if f.multi_hot else None)
        return cls(arrays[0], arrays[1], ids)


def encode_batch(batch: pa.RecordBatch, schema: FeatureSchema, vocabs: dict[str, pa.Array]) -> Encoded:
    """Labels, dense matrix and every sparse feature's ids of a block: the one encoder, a pure
    function of the batch, the fitted schema and its vocabularies (so workers may run it)."""
    ids = {}
    for f in schema.sparse:
        bags = bags_of(batch, f)
        ids[f.name] = (encode_ids(batch, schema, f, bags, vocabs.get(f.table)).astype(
            layout.id_dtype(schema.id_range(f)), copy=False), bags.lengths)  # the stored width
    return Encoded(labels_of(batch, schema), dense_matrix(batch, schema), ids)
