"""One read of the inputs: every row staged as far as it can be encoded without fitted state,
then the time cut-offs, the fit and the write from binary passes over the staged columns.

The read pass runs the one encoder (encode.py) on every record batch and appends, under
``DIR/.staging.partial/``:

- each numeric column (label, time, dense inputs) as read: float64, NaN where the cell is
  missing (read.py refuses every non-finite cell, so NaN means missing and nothing else);
- each identity/hash feature's finished ids (int64);
- each vocabulary feature's values as their FNV-1a 64 hash (uint64; a missing value is 0, a
  value no text hashes to in practice: one that does is refused), and, for multi-hot features,
  every row's bag length.

Beside them, per vocabulary table, the distinct texts (``_Distinct``: bounded by the distinct
values, not the rows); two texts with one hash are an error naming both. Every record
batch's origin (file, first row, row count) is kept, so the later passes walk the same blocks:
the dense moments merge block by block exactly as a pass over the input would (the scales are
bit-for-bit the same) and an error still names the file and line.

After the read: the time cut-offs from the staged times (8 bytes per row: exact quantiles), the
fit over the training rows (vocabulary counts with ``np.bincount`` over each value's position
among the distinct hashes, fnv.HashIndex; dense moments), then the finishing pass: ids from the
positions (unseen values
to an OOV bucket by the same ``fnv1a % oov_buckets`` rule), fitted scales applied, each row to
its split's files (preprocess._SplitWriter). The staging directory is removed at the end, on
failure too. A run whose fitted state is already known (a rerun after fit.json, or a schema with
nothing to fit and a random split) finishes every block as it is read, with no staging at all.

``supported`` says which schemas this path serves (text inputs split by random or time); the
driver runs the others' passes itself.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrm_dist.data.columnar import encode, layout, read
from dlrm_dist.data.columnar import kernels
from dlrm_dist.data.columnar.kernels import HashIndex, fnv1a, text_order
from dlrm_dist.data.columnar.locate import ORIGIN_FIRST, ORIGIN_PATH
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.data.npy import Tally
from dlrm_dist.data.prefetch import Prefetcher
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import SPLITS, FeatureSchema, SparseFeature
from dlrm_dist.fileio import atomic_write_bytes, disk_full

STAGING = ".staging.partial"
MISSING = np.uint64(0)  # the staged hash of a missing value
_EMPTY = np.uint64(0xCBF29CE484222325)  # FNV-1a 64 of "" (the offset basis): a missing value's OOV hash
_CHUNK = 1 << 20  # values per vectorised step of the binary passes (bounded memory)
_PLAIN = np.ones(256, bool)  # bytes json.dumps writes as themselves inside a string
_PLAIN[:0x20] = _PLAIN[0x7F:] = _PLAIN[ord('"')] = _PLAIN[ord("\\")] = False


def supported(schema: FeatureSchema) -> bool:
    """Schemas whose passes this module runs: text inputs, split by random or time."""
    return (schema.input.format in (None, "csv", "tsv", "parquet") and schema.split.by in ("random", "time")
            and all(f.order in ("frequency", "value") for f in schema.sparse if f.kind == "vocab"))


# -- distinct values of a vocabulary table ----------------------------------------------------------
class _Distinct:
    """The distinct texts of one vocabulary table seen so far (memory bounded by the table's
    distinct values: the blocks' dictionaries are merged whenever they outgrow the merged set)."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.texts: pa.Array = pa.array([], pa.string())
        self._parts: list[pa.Array] = []
        self._pending = 0

    def add(self, values: pa.Array) -> np.ndarray:
        """The staged hash of every value (MISSING for a missing one); remembers the new texts."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        coded = pc.dictionary_encode(values)  # one hash per distinct text of the block, not per row
        texts = pc.cast(coded.dictionary, pa.string())
        hashes = fnv1a(texts)
        self._parts.append(texts)
        self._pending += len(texts)
        if self._pending > max(len(self.texts), _CHUNK):
            self._merge()
        if values.null_count:
            out = hashes[pc.fill_null(coded.indices, 0).to_numpy()] if len(texts) else np.zeros(len(values), np.uint64)
            out[values.is_null().to_numpy(zero_copy_only=False)] = MISSING
            return out
        return hashes[coded.indices.to_numpy()]

    def _merge(self) -> None:
        if self._parts:
            self.texts = pc.unique(pa.concat_arrays([self.texts, *self._parts]))
            self._parts, self._pending = [], 0

    def finish(self) -> tuple[np.ndarray, pa.Array]:
        """(hashes, texts) of the distinct values; two texts with one hash, or a text hashing to
        the code of a missing value, are an error naming them."""
        self._merge()
        hashes = fnv1a(self.texts)
        order = np.argsort(hashes)
        same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
        if same.size:
            i, j = int(order[same[0]]), int(order[same[0] + 1])
            raise PreprocessError(
                f"vocabulary table {self.table!r}: the values {self.texts[i].as_py()!r} and {self.texts[j].as_py()!r} "
                f"have the same FNV-1a 64 hash ({int(hashes[i]):#018x}), which preprocessing tells values apart "
                "by; rename one of them in the data, or make the feature kind = \"hash\"")
        zero = np.flatnonzero(hashes == MISSING)
        if zero.size:
            raise PreprocessError(f"vocabulary table {self.table!r}: the value {self.texts[int(zero[0])].as_py()!r} "
                                  "hashes to 0 (FNV-1a 64), the code of a missing value; rename it in the data")
        return hashes, self.texts

    @classmethod
    def check_against(cls, table: str, texts: pa.Array, vocabulary: pa.Array) -> None:
        """Refuses a staged value whose hash is a written vocabulary value's but whose text is not."""
        both = cls(table)
        both._parts = [texts, vocabulary]
        both.finish()


# -- the staged columns -------------------------------------------------------------------------------
@dataclass
class _Block:
    """One record batch as read: where it came from, where its rows and values are staged."""

    path: str
    first: int  # its first row's index in the file
    rows: int
    row0: int  # its first row's index over all inputs
    values: dict[str, int] = field(default_factory=dict)  # multi-hot feature -> its first flat value


@dataclass
class _Arrays:
    """A block's staged arrays: numeric columns as read, sparse values (finished ids, or hashes of
    vocabulary values) and bag lengths (None: one value per row)."""

    numbers: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    lengths: dict[str, Optional[np.ndarray]]


def numeric_batch(block: _Block, numbers: dict[str, np.ndarray]) -> pa.RecordBatch:
    """The numeric reads of a block as read.py gave them (NaN back to null), with its origin: the
    encoder's functions (labels, split, dense) run on it as on the batch read from the file."""
    arrays = [pa.array(np.asarray(x, np.float64), from_pandas=True) for x in numbers.values()]
    names = [read.field_name(read.NUM, c) for c in numbers]
    meta = {ORIGIN_PATH: block.path, ORIGIN_FIRST: str(block.first)}
    if not arrays:
        return pa.RecordBatch.from_arrays([pa.nulls(block.rows)], names=["_"]).replace_schema_metadata(meta)
    return pa.RecordBatch.from_arrays(arrays, names=names).replace_schema_metadata(meta)


class _Column:
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
            self.tally.bytes += rows.nbytes
        self.rows += len(rows)

    def close(self) -> np.ndarray:
        with disk_full(self.path, self.tally.bytes):
            self.file.close()
        return np.memmap(self.path, self.dtype, "r", shape=(self.rows,)) if self.rows else np.zeros(0, self.dtype)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()


class _Stage:
    """The staged columns of one run under ``DIR/.staging.partial`` (files by index, not by name:
    column names are data)."""

    def __init__(self, out: Path, schema: FeatureSchema) -> None:
        self.dir = out / STAGING
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir()
        self.schema = schema
        self.columns = read.numeric_columns(schema)
        tally = Tally()
        self.numbers = {c: _Column(self.dir / f"num{i}", np.float64, tally) for i, c in enumerate(self.columns)}
        self.values, self.lengths = {}, {}
        for j, f in enumerate(schema.sparse):
            dtype = np.uint64 if f.kind == "vocab" else np.int64
            self.values[f.name] = _Column(self.dir / f"sparse{j}", dtype, tally)
            if f.multi_hot:
                self.lengths[f.name] = _Column(self.dir / f"lengths{j}", np.int64, tally)
        self.blocks: list[_Block] = []
        self.mapped: dict[str, dict[str, np.ndarray]] = {}  # numbers/values/lengths -> name -> column, once complete

    def append(self, block: _Block, arrays: _Arrays) -> None:
        for c, x in arrays.numbers.items():
            self.numbers[c].append(x)
        for name, v in arrays.values.items():
            if name in self.lengths:
                block.values[name] = self.values[name].rows
                self.lengths[name].append(arrays.lengths[name])
            self.values[name].append(v)
        self.blocks.append(block)

    def close(self) -> None:
        self.mapped = {kind: {name: column.close() for name, column in group.items()}
                       for kind, group in (("numbers", self.numbers), ("values", self.values), ("lengths", self.lengths))}

    def arrays(self, block: _Block) -> _Arrays:
        """A block's staged arrays (memory-mapped slices)."""
        r = slice(block.row0, block.row0 + block.rows)
        numbers = {c: self.mapped["numbers"][c][r] for c in self.columns}
        values, lengths = {}, {}
        for f in self.schema.sparse:
            if f.multi_hot:
                lengths[f.name] = np.asarray(self.mapped["lengths"][f.name][r])
                v0 = block.values[f.name]
                values[f.name] = self.mapped["values"][f.name][v0: v0 + int(lengths[f.name].sum())]
            else:
                values[f.name], lengths[f.name] = self.mapped["values"][f.name][r], None
        return _Arrays(numbers, values, lengths)

    def times(self) -> np.ndarray:
        return np.asarray(self.mapped["numbers"][self.schema.split.column])

    def remove(self) -> None:
        for w in [*self.numbers.values(), *self.values.values(), *self.lengths.values()]:
            w.abort()
        self.mapped = {}
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the read pass -------------------------------------------------------------------------------------
def stage_batch(batch: pa.RecordBatch, schema: FeatureSchema, distinct: dict[str, _Distinct]) -> _Arrays:
    """A record batch encoded as far as it can be without fitted state."""
    numbers = {c: read.numbers(batch, c).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
               for c in read.numeric_columns(schema)}
    values, lengths = {}, {}
    for f in schema.sparse:
        bags = encode.bags_of(batch, f)
        if f.kind == "vocab":
            values[f.name] = distinct[f.table].add(bags.values)
        else:
            values[f.name] = encode.encode_ids(batch, schema, f, bags, None)
        lengths[f.name] = bags.lengths
    return _Arrays(numbers, values, lengths)


def read_blocks(opts: Any, schema: FeatureSchema, bad: read.BadLines, distinct: dict[str, _Distinct],
                progress: Callable[[int], None]) -> Iterator[tuple[_Block, _Arrays]]:
    """Every record batch of every input, staged, with its origin. The file is parsed a batch ahead
    on a reader thread (pyarrow parses without the GIL) while this one stages the last batch: the
    two cores each do one half of the read pass."""
    row0 = 0
    batches = Prefetcher(read.read_inputs(opts.inputs, schema, bad), depth=2)
    try:
        for path, first, batch in batches:
            block = _Block(str(path), first, batch.num_rows, row0)
            yield block, stage_batch(batch, schema, distinct)
            row0 += batch.num_rows
            progress(batch.num_rows)
    finally:
        batches.close()  # (joins the reader thread: its file's read has ended when this returns)


# -- cut-offs and fit ---------------------------------------------------------------------------------
def time_cutoffs(schema: FeatureSchema, t: np.ndarray, refuse: Callable[..., None]) -> tuple[float, float]:
    """The times where val and test begin: quantiles of every row's time at the fractions."""
    s = schema.split
    f = s.fractions
    cutoffs = float(np.quantile(t, f[0])), float(np.quantile(t, f[0] + f[1])) if f[2] > 0 else float("inf")
    val, test = int((t >= cutoffs[0]).sum()), int((t >= cutoffs[1]).sum())
    refuse(schema, {"train": len(t) - val, "val": val - test, "test": test},
           f" by time column {s.column!r} (cut-offs {cutoffs[0]:g}, {cutoffs[1]:g}: ties stay together)")
    return cutoffs


class _Vocabulary:
    """A table's vocabulary fitted from the staged hashes: counts over the training rows per distinct
    value; ``vocabulary`` orders them as encode's vocabularies are ordered."""

    def __init__(self, f: SparseFeature, hashes: np.ndarray, texts: pa.Array) -> None:
        self.order = f.order
        self.hashes, self.texts = hashes, texts
        self.index = HashIndex(hashes)
        self.counts = np.zeros(len(hashes), np.int64)
        self.kept: Optional[np.ndarray] = None  # positions of the vocabulary's values, in id order

    def add(self, staged: np.ndarray) -> None:
        for lo in range(0, len(staged), _CHUNK):
            pos = self.index.find(staged[lo: lo + _CHUNK])
            self.counts += np.bincount(pos[pos >= 0], minlength=len(self.hashes))

    def vocabulary(self, min_count: int) -> pa.Array:
        """The values seen at least ``min_count`` times in id order (frequency: most frequent
        first, ties by value, as encode's vocabularies; value: ascending)."""
        kept = np.flatnonzero(self.counts >= min_count)
        texts = pc.take(self.texts, pa.array(kept))
        by = -self.counts[kept] if self.order == "frequency" else None
        self.kept = kept[text_order(texts, by)]
        return pc.take(self.texts, pa.array(self.kept))

    def id_map(self, oov_buckets: int) -> np.ndarray:
        """The id of each distinct value: oov_buckets + its vocabulary position, or -1 (to an OOV bucket)."""
        ids = np.full(len(self.hashes), -1, np.int64)
        ids[self.kept] = oov_buckets + np.arange(len(self.kept))
        return ids


def fit(stage: _Stage, schema: FeatureSchema, cutoffs: Optional[tuple[float, float]],
        distinct: dict[str, tuple[np.ndarray, pa.Array]], moments: dict[str, Any]) -> dict[str, _Vocabulary]:
    """Vocabulary counts and dense moments over the training rows, block by block."""
    vocabs = {t: _Vocabulary(schema.features_of(t)[0], *distinct[t]) for t in distinct}
    fitted = [d for d in schema.dense if d.fitted]
    for block in stage.blocks:
        arrays = stage.arrays(block)
        batch = numeric_batch(block, arrays.numbers)
        train = encode.split_of(batch, schema, block.row0, cutoffs) == 0
        if not train.any():
            continue
        for f in schema.sparse:
            if f.kind == "vocab":
                lengths = arrays.lengths[f.name]
                keep = train if lengths is None else np.repeat(train, lengths)
                vocabs[f.table].add(np.asarray(arrays.values[f.name])[keep])
        for d in fitted:  # on the whole block, so that an error names the right line
            moments[d.name].add(encode.dense_raw(batch, d, schema)[train])
    return vocabs


# -- the finishing pass ----------------------------------------------------------------------------------
class IdMaps:
    """Every vocabulary table's hash -> id map: an index of its distinct hashes and their ids
    (-1: not in the vocabulary, to an OOV bucket)."""

    def __init__(self, tables: dict[str, tuple[HashIndex, np.ndarray]]) -> None:
        self.tables = tables

    @classmethod
    def from_vocabularies(cls, out: Path, schema: FeatureSchema) -> "IdMaps":
        """From the written vocabularies (a rerun after the fit): each value's hash and id."""
        tables = {}
        for t in schema.table_names:
            f = schema.features_of(t)[0]
            if f.kind == "vocab":
                hashes = fnv1a(pa.array(layout.read_vocab(out, t), pa.string()))
                tables[t] = (HashIndex(hashes), f.oov_buckets + np.arange(len(hashes), dtype=np.int64))
        return cls(tables)

    def ids(self, f: SparseFeature, staged: np.ndarray) -> np.ndarray:
        index, ids = self.tables[f.table]
        staged = np.asarray(staged)
        pos = index.find(staged)
        out = ids[pos] if len(ids) else np.zeros(len(pos), np.int64)
        out[pos < 0] = -1
        unseen = out < 0
        if unseen.any():  # unseen, rare or missing: an OOV bucket by its hash (a missing one: the empty text's)
            h = staged[unseen]
            out[unseen] = (np.where(h == MISSING, _EMPTY, h) % np.uint64(f.oov_buckets)).astype(np.int64)
        return out


def finish_block(block: _Block, arrays: _Arrays, schema: FeatureSchema, cutoffs: Optional[tuple[float, float]],
                 maps: IdMaps, writers: dict[str, Any]) -> None:
    """A block's rows, fitted steps applied, appended to their splits' files."""
    batch = numeric_batch(block, arrays.numbers)
    labels = encode.labels_of(batch, schema)
    split = encode.split_of(batch, schema, block.row0, cutoffs)
    dense = encode.dense_matrix(batch, schema)
    ids = {}
    for f in schema.sparse:
        values = arrays.values[f.name]
        ids[f.name] = (maps.ids(f, values) if f.kind == "vocab" else np.asarray(values), arrays.lengths[f.name])
    for k, s in enumerate(SPLITS):
        writers[s].append(split == k, dense, labels, ids)


# -- the passes -------------------------------------------------------------------------------------------
def run(opts: Any) -> tuple[FeatureSchema, Optional[tuple[float, float]], dict[str, Any], Any]:
    """The whole conversion of a (locked, checked) job: (fitted schema, cut-offs, splits, report)."""
    from dlrm_dist.data.columnar import preprocess as driver  # (the driver imports this module lazily)

    out, schema = opts.out_dir, opts.schema
    shutil.rmtree(out / STAGING, ignore_errors=True)  # a killed run's
    done = layout.read_fit(out)
    vocab_tables = [t for t in schema.table_names if schema.features_of(t)[0].kind == "vocab"]
    if schema.split.by != "time" and (done is not None or not (vocab_tables or any(d.fitted for d in schema.dense))):
        return _inline(opts, driver, done)
    stage = _Stage(out, schema)
    try:
        return _staged(opts, driver, stage, done, vocab_tables)
    finally:
        stage.remove()


def _fitted(schema: FeatureSchema, fit_result: dict[str, Any]) -> FeatureSchema:
    return schema.with_fitted(fit_result["vocab_rows"], {k: tuple(v) for k, v in fit_result["scales"].items()})


def _inline(opts: Any, driver: Any, done: Optional[dict[str, Any]]) -> tuple:
    """Fitted state known (or none needed), the split known per row: every block finished as read."""
    if done is None:
        done = {"vocab_rows": {}, "scales": {}}
        layout.write_fit(opts.out_dir, done)
    schema = _fitted(opts.schema, done)
    maps = IdMaps.from_vocabularies(opts.out_dir, schema)
    distinct = {t: _Distinct(t) for t in maps.tables}
    for t in maps.tables:  # a value unseen at the fit but hashing like a vocabulary's is refused
        distinct[t].add(pa.array(layout.read_vocab(opts.out_dir, t), pa.string()))
    report = driver.Report()

    def rows(opts: Any, schema: FeatureSchema, cutoffs: Any, report: Any, writers: dict[str, Any], days: Any) -> None:
        bad = read.BadLines(strict=opts.strict)
        with driver._bar(opts, "preprocess") as bar:
            for block, arrays in read_blocks(opts, schema, bad, distinct, bar.update):
                finish_block(block, arrays, schema, None, maps, writers)
                report.rows_read = block.row0 + block.rows
        for d in distinct.values():
            d.finish()
        report.rows_read, report.skipped, report.examples = report.rows_read + bad.count, bad.count, bad.examples

    return schema, None, driver._write(opts, schema, None, report, rows=rows), report


def _staged(opts: Any, driver: Any, stage: _Stage, done: Optional[dict[str, Any]], vocab_tables: list[str]) -> tuple:
    """One read into the stage; cut-offs, fit and the write from it."""
    schema, report = opts.schema, driver.Report()
    distinct = {t: _Distinct(t) for t in vocab_tables}
    bad = read.BadLines(strict=opts.strict)
    with driver._bar(opts, "read") as bar:
        for block, arrays in read_blocks(opts, schema, bad, distinct, bar.update):
            stage.append(block, arrays)
    stage.close()
    last = stage.blocks[-1] if stage.blocks else None
    rows = last.row0 + last.rows if last else 0
    report.rows_read, report.skipped, report.examples = rows + bad.count, bad.count, bad.examples
    pairs = {t: distinct[t].finish() for t in vocab_tables}
    cutoffs = time_cutoffs(schema, stage.times(), driver.refuse_empty_splits) if schema.split.by == "time" else None
    if done is None:
        done, maps = _fit_and_save(opts, driver, stage, cutoffs, pairs)
    else:  # a rerun after the fit: the vocabularies written then (the staged values were checked against them)
        maps = IdMaps.from_vocabularies(opts.out_dir, schema)
        for t, (hashes, texts) in maps.tables.items():
            _Distinct.check_against(t, pairs[t][1], pa.array(layout.read_vocab(opts.out_dir, t), pa.string()))
    fitted = _fitted(schema, done)

    def rows_from_stage(opts: Any, schema: FeatureSchema, cutoffs: Any, report: Any, writers: dict[str, Any],
                        days: Any) -> None:
        with driver._bar(opts, "write") as bar:
            for block in stage.blocks:
                finish_block(block, stage.arrays(block), schema, cutoffs, maps, writers)
                bar.update(block.rows)

    return fitted, cutoffs, driver._write(opts, fitted, cutoffs, report, rows=rows_from_stage), report


def vocab_json(texts: pa.Array) -> bytes:
    """The bytes ``layout.write_vocab`` writes for ``texts`` (``json.dumps`` of the list, a newline):
    built from the Arrow buffers when every byte is printable ASCII other than a quote or a
    backslash (what json.dumps copies as is), else by json.dumps itself."""
    if not len(texts):
        return b"[]\n"
    offsets, data = kernels.buffers(texts)
    body = data[offsets[0]: offsets[-1]]
    if len(body) > 1 << 30 or not _PLAIN[body].all():  # (one Arrow string holds under 2 GB)
        return (json.dumps(texts.to_pylist(), allow_nan=False) + "\n").encode()
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(texts)], pa.int32()), texts), '", "')
    return b'["' + joined[0].as_buffer().to_pybytes() + b'"]\n'


def _save_vocabularies(opts: Any, vocabs: dict[str, _Vocabulary], result: dict[str, Any]) -> None:
    """Writes every fitted vocabulary (vocab/<table>.json) and its table's rows into ``result``."""
    (opts.out_dir / layout.VOCAB_DIR).mkdir(exist_ok=True)
    for table, v in vocabs.items():
        f = opts.schema.features_of(table)[0]
        texts = v.vocabulary(f.min_count)
        if not len(texts):
            names = [x.name for x in opts.schema.features_of(table)]
            raise SchemaError(f"vocabulary feature(s) {names} (table {table!r}) have no value seen at least "
                              f"{f.min_count} time(s) in the training split: check the column and min_count")
        atomic_write_bytes(layout.vocab_file(opts.out_dir, table), vocab_json(texts))
        result["vocab_rows"][table] = f.oov_buckets + len(texts)


def _fit_and_save(opts: Any, driver: Any, stage: _Stage, cutoffs: Optional[tuple[float, float]],
                  pairs: dict[str, tuple[np.ndarray, pa.Array]]) -> tuple[dict[str, Any], IdMaps]:
    """The fit over the staged training rows, saved as the driver's own fit pass saves it; the
    id maps of the vocabularies fitted."""
    schema = opts.schema
    fitted = [d for d in schema.dense if d.fitted]
    moments = {d.name: driver._Moments(d.name) for d in fitted}
    result: dict[str, Any] = {"vocab_rows": {}, "scales": {}}
    vocabs = fit(stage, schema, cutoffs, pairs, moments)
    if pairs or fitted:
        _save_vocabularies(opts, vocabs, result)
        result["scales"] = {d.name: moments[d.name].scale(d.fitted) for d in fitted}
    layout.write_fit(opts.out_dir, result)
    oov = {t: schema.features_of(t)[0].oov_buckets for t in vocabs}
    return result, IdMaps({t: (v.index, v.id_map(oov[t])) for t, v in vocabs.items()})
