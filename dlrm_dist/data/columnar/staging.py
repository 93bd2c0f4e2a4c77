"""One read of the inputs: every row staged as far as it can be encoded without fitted state,
then the time cut-offs, the fit and the write from binary passes over the staged columns.

The read pass runs the one encoder (encode.py) on every record batch and appends, under
``DIR/.staging.partial/``:

- each numeric column (label, time, dense inputs) as read: float64, NaN where the cell is
  missing (read.py refuses every non-finite cell, so NaN means missing and nothing else);
- every row's label as encode.labels_of gave it (float32 0/1: a categorical label's text is
  not among the numeric columns);
- each identity/hash feature's finished ids (int64);
- each vocabulary feature's values as their ids among the table's distinct texts (int64, -1 for
  a missing value; kernels.Interner: bounded by the distinct values, not the rows; two texts
  with one FNV-1a 64 hash are an error naming both), and, for multi-hot features, every row's
  bag length.

Every record batch's origin (file, first row, row count; criteo_tsv rows: their lines) is kept,
so the later passes walk the same blocks: the dense moments merge block by block exactly as a
pass over the input would (the scales are bit-for-bit the same) and an error still names the
file and line.

After the read: the time cut-offs from the staged times (8 bytes per row: exact quantiles), the
fit over the training rows (dense moments block by block; then one job per vocabulary table on
the thread pool: its counts by kernels.count_ids over the staged ids, its order by
kernels.text_order, or as numbers for criteo_tsv's integer values, its file), then the finishing
pass: model ids from the distinct ids (values not in the vocabulary to an OOV bucket by the same
``fnv1a % oov_buckets`` rule as encode.py), fitted scales applied, each row to its split's files
(layout.SplitWriter; by day, the last day's to the holdout). The staging directory is removed at
the end, on failure too. A run whose fitted state is already known (a rerun after fit.json, or a
schema with nothing to fit) and whose split needs no cut-offs finishes every block as it is read,
with no staging at all.

This is the one fit of every input format and split (random, time, day with pseudo-days, a day
partition); preprocess.py's dispatcher streams only criteo_tsv jobs with nothing to fit.
The fit's state (moments, vocabularies, id maps, the vocabulary files) is fit.py's.
"""

from __future__ import annotations

import contextlib
import shutil
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa

from dlrm_dist.data.columnar import byte_ranges, columns, encode, job, kernels, layout, read
from dlrm_dist.data.columnar.encode import Days
from dlrm_dist.data.columnar.job import (TARGETS, Options, Report, bar, fitted_schema, known_fit, time_cutoffs,
                                         vocab_tables)
from dlrm_dist.data.columnar.fit import (IdMaps, IntVocabulary, Moments, Vocabulary, intern, interners, staged_integers,
                                         vocab_json)
from dlrm_dist.data.columnar.kernels import Interner
from dlrm_dist.data.columnar.locate import LINE_FIELD, ORIGIN_FIRST, ORIGIN_PATH
from dlrm_dist.data.npy import Tally
from dlrm_dist.data.prefetch import Prefetcher
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import FeatureSchema, SparseFeature
from dlrm_dist.fileio import atomic_write_bytes, disk_full

STAGING = ".staging.partial"


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
    vocabulary values), bag lengths (None: one value per row) and the encoded labels."""

    numbers: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    lengths: dict[str, Optional[np.ndarray]]
    labels: np.ndarray


def _floats(x: np.ndarray) -> pa.Array:
    """A staged numeric column as Arrow float64, NaN as null (``pa.array(from_pandas=True)``'s
    result, its validity bitmap built by numpy: 10x faster)."""
    x = np.ascontiguousarray(x, np.float64)
    missing = np.isnan(x)
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None
    return pa.Array.from_buffers(pa.float64(), len(x), [validity, pa.py_buffer(x)])


def numeric_batch(block: _Block, numbers: dict[str, np.ndarray]) -> pa.RecordBatch:
    """The numeric reads of a block as read.py gave them (NaN back to null), with its origin: the
    encoder's functions (labels, split, dense) run on it as on the batch read from the file."""
    arrays = [pa.array(np.asarray(x, np.int64)) if c == LINE_FIELD else _floats(x)
              for c, x in numbers.items()]  # (criteo_tsv's rows: their lines too, under their own name)
    names = [c if c == LINE_FIELD else read.field_name(read.NUM, c) for c in numbers]
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
        # criteo_tsv rows carry their lines (pseudo-days are cut by line; errors name the line)
        self.columns = read.numeric_columns(schema) + ([LINE_FIELD] if schema.input.format == "criteo_tsv" else [])
        tally = Tally()
        self.numbers = {c: _Column(self.dir / f"num{i}", np.float64, tally) for i, c in enumerate(self.columns)}
        self.labels = _Column(self.dir / "labels", np.float32, tally)
        self.values, self.lengths = {}, {}
        for j, f in enumerate(schema.sparse):
            self.values[f.name] = _Column(self.dir / f"sparse{j}", np.int64, tally)
            if f.multi_hot:
                self.lengths[f.name] = _Column(self.dir / f"lengths{j}", np.int64, tally)
        self.blocks: list[_Block] = []
        self.mapped: dict[str, dict[str, np.ndarray]] = {}  # numbers/values/lengths -> name -> column, once complete

    def append(self, block: _Block, arrays: _Arrays) -> None:
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
                       for kind, group in (("numbers", self.numbers), ("values", self.values), ("lengths", self.lengths),
                                           ("labels", {"": self.labels}))}

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
        return _Arrays(numbers, values, lengths, self.mapped["labels"][""][r])

    def times(self) -> np.ndarray:
        return np.asarray(self.mapped["numbers"][self.schema.split.column])

    def remove(self) -> None:
        for w in [*self.numbers.values(), *self.values.values(), *self.lengths.values(), self.labels]:
            w.abort()
        self.mapped = {}
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the read pass -------------------------------------------------------------------------------------
def _jobs(schema: FeatureSchema) -> list[list[SparseFeature]]:
    """The sparse features in groups that may run at once: one group per vocabulary table (its
    distinct ids follow first sight, so its features run in schema order), one per other feature."""
    groups: dict[str, list[SparseFeature]] = {}
    for f in schema.sparse:
        groups.setdefault(f.table if f.kind == "vocab" else "\0" + f.name, []).append(f)
    return list(groups.values())


def _bags(batch: pa.RecordBatch, f: SparseFeature) -> encode.Bags:
    """encode.bags_of's bags; a multi-hot vocabulary's (no prefix, a one-byte delimiter) split by
    kernels.split_bags (the same values and counts, a fraction of pyarrow's split's cost)."""
    if f.kind == "vocab" and f.multi_hot and f.prefix is None:
        split = kernels.split_bags(columns.texts(batch, f.column), f.delimiter)
        if split is not None:
            return encode.Bags(*split)
    return encode.bags_of(batch, f)


def stage_batch(batch: pa.RecordBatch, schema: FeatureSchema, distinct: dict[str, Interner],
                pool: Executor) -> _Arrays:
    """A record batch encoded as far as it can be without fitted state (an empty time or label cell
    is named by its line here, while the batch still knows where it came from). The sparse
    features run on ``pool``'s threads (the kernels and pyarrow release the GIL), the numbers here."""
    def sparse(features: list[SparseFeature]) -> dict[str, tuple[np.ndarray, Optional[np.ndarray]]]:
        out = {}
        for f in features:
            bags = _bags(batch, f)
            if f.kind != "vocab":
                ids = encode.encode_ids(batch, schema, f, bags, None)
            else:  # (criteo_tsv's integer values: no interner, staged as they are)
                ids = intern(distinct, f.table, bags.values) if f.table in distinct else staged_integers(bags.values)
            out[f.name] = ids, bags.lengths
        return out

    jobs = [pool.submit(sparse, group) for group in _jobs(schema)]
    try:
        labels = encode.labels_of(batch, schema)
        if schema.split.by == "time":
            encode.times_of(batch, schema)
        numbers = {c: read.numbers(batch, c).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                   for c in read.numeric_columns(schema)}
        if LINE_FIELD in batch.schema.names:  # criteo_tsv: each row's line (pseudo-days; errors name it)
            numbers[LINE_FIELD] = batch.column(LINE_FIELD).to_numpy()
    finally:
        wait(jobs)  # (none may still touch the tables once this returns or raises)
    done = {name: v for job in jobs for name, v in job.result().items()}  # (the first error in schema order)
    return _Arrays(numbers, {f.name: done[f.name][0] for f in schema.sparse},
                   {f.name: done[f.name][1] for f in schema.sparse}, labels)


READ_AHEAD = 6  # record batches parsed ahead of the staging (the parse goes on while numba loads its kernels)


def read_blocks(opts: Any, schema: FeatureSchema, bad: read.BadLines, distinct: dict[str, Interner],
                progress: Callable[[int], None], pool: Executor) -> Iterator[tuple[_Block, _Arrays]]:
    """Every record batch of every input, staged, with its origin. The file is parsed ahead on a
    reader thread (pyarrow parses without the GIL) while ``pool``'s threads stage the last batch."""
    row0 = 0
    batches = Prefetcher(read.read_inputs(opts.inputs, schema, bad, workers=opts.workers), depth=READ_AHEAD)
    try:
        for path, first, batch in batches:
            block = _Block(str(path), first, batch.num_rows, row0)
            yield block, stage_batch(batch, schema, distinct, pool)
            row0 += batch.num_rows
            progress(batch.num_rows)
    finally:
        batches.close()  # (joins the reader thread: its file's read has ended when this returns)


# -- cut-offs and fit ---------------------------------------------------------------------------------
def fit(stage: _Stage, schema: FeatureSchema, cutoffs: Optional[tuple[float, float]], days: Optional[Days],
        distinct: dict[str, Interner], moments: dict[str, Any]) -> tuple[dict[str, Vocabulary], list[np.ndarray]]:
    """The dense moments over the training rows, block by block (here: they merge in block order),
    and every block's training rows; the vocabularies, to be counted (``count``) table by table."""
    vocabs = {t: Vocabulary(schema.features_of(t)[0], distinct[t]) if t in distinct else
              IntVocabulary(schema.features_of(t)[0]) for t in vocab_tables(schema)}
    fitted = [d for d in schema.dense if d.fitted]
    trains = []
    for block in stage.blocks:
        batch = numeric_batch(block, stage.arrays(block).numbers)
        trains.append(encode.split_of(batch, schema, block.row0, cutoffs, days) == 0)
        if trains[-1].any():
            for d in fitted:  # on the whole block, so that an error names the right line
                moments[d.name].add(encode.dense_raw(batch, d, schema)[trains[-1]])
    return vocabs, trains


def count(stage: _Stage, schema: FeatureSchema, table: str, vocab: Vocabulary, trains: list[np.ndarray]) -> None:
    """A table's vocabulary counts over every block's training rows (one job per table: the
    tables' counts run at once)."""
    features = schema.features_of(table)
    for block, train in zip(stage.blocks, trains):
        if train.any():
            arrays = stage.arrays(block)
            for f in features:
                vocab.add(arrays.values[f.name], train, arrays.lengths[f.name])


# -- the finishing pass ----------------------------------------------------------------------------------
def finish_block(block: _Block, arrays: _Arrays, schema: FeatureSchema, cutoffs: Optional[tuple[float, float]],
                 days: Optional[Days], maps: IdMaps, writers: dict[str, Any], pool: Executor) -> None:
    """A block's rows, fitted steps applied (the vocabulary ids on ``pool``), appended to their splits'
    files (a day split's last day to the holdout's)."""
    jobs = {f.name: pool.submit(maps.ids, f, arrays.values[f.name]) for f in schema.sparse
            if f.kind == "vocab"}
    try:
        batch = numeric_batch(block, arrays.numbers)
        labels = np.asarray(arrays.labels)  # (encoded as read: a categorical label's text is not staged)
        split = encode.split_of(batch, schema, block.row0, cutoffs, days)
        dense = encode.dense_matrix(batch, schema)
    finally:
        wait(jobs.values())
    ids = {f.name: (jobs[f.name].result() if f.name in jobs else np.asarray(arrays.values[f.name]),
                    arrays.lengths[f.name]) for f in schema.sparse}
    for k, s in TARGETS.items():
        if s in writers:
            writers[s].append(split == k, dense, labels, ids)


# -- the passes -------------------------------------------------------------------------------------------
def run(opts: Options, days: Optional[Days]) -> tuple[FeatureSchema, Optional[tuple[float, float]], dict[str, Any], Report]:
    """The whole conversion of a (locked, checked) job: (fitted schema, cut-offs, splits, report)."""
    out, schema = opts.out_dir, opts.schema
    done = known_fit(opts)
    with ThreadPoolExecutor(max_workers=byte_ranges.cpu_threads(), thread_name_prefix="dlrm_dist-stage") as pool:
        if schema.split.by != "time" and done is not None:
            return _inline(opts, done, days, pool)
        stage = _Stage(out, schema)
        try:
            return _staged(opts, stage, done, days, pool)
        finally:
            stage.remove()


def _inline(opts: Options, done: dict[str, Any], days: Optional[Days], pool: Executor) -> tuple:
    """Fitted state known (or none needed), the split known per row: every block finished as read."""
    schema = fitted_schema(opts.schema, done)
    distinct = interners(schema)
    maps = IdMaps.from_vocabularies(opts.out_dir, schema, distinct)  # (the vocabulary's values first: ids 0..)
    report = Report()

    def rows(opts: Options, schema: FeatureSchema, cutoffs: Any, report: Report, writers: dict[str, Any],
             days: Optional[Days]) -> None:
        bad = read.BadLines(strict=opts.strict)
        rows = 0
        with bar(opts, "preprocess") as shown:
            for block, arrays in read_blocks(opts, schema, bad, distinct, shown.update, pool):
                finish_block(block, arrays, schema, None, days, maps, writers, pool)
                rows = block.row0 + block.rows
        report.read(rows, bad)

    return schema, None, job.write_outputs(opts, schema, None, report, rows, days), report


def _staged(opts: Options, stage: _Stage, done: Optional[dict[str, Any]], days: Optional[Days],
            pool: Executor) -> tuple:
    """One read into the stage; cut-offs, fit and the write from it."""
    schema, report = opts.schema, Report()
    distinct = interners(schema)
    bad = read.BadLines(strict=opts.strict)
    with bar(opts, "read") as shown:
        for block, arrays in read_blocks(opts, schema, bad, distinct, shown.update, pool):
            stage.append(block, arrays)
    stage.close()
    last = stage.blocks[-1] if stage.blocks else None
    rows = last.row0 + last.rows if last else 0
    report.read(rows, bad)
    cutoffs = time_cutoffs(schema, stage.times(), report) if schema.split.by == "time" else None
    if done is None:
        done, maps = _fit_and_save(opts, stage, cutoffs, days, distinct, pool)
    else:  # a rerun after the fit: the vocabularies written then
        maps = IdMaps.from_vocabularies(opts.out_dir, schema, distinct)
    fitted = fitted_schema(schema, done)

    def rows_from_stage(opts: Options, schema: FeatureSchema, cutoffs: Any, report: Report,
                        writers: dict[str, Any], days: Optional[Days]) -> None:
        with bar(opts, "write") as shown:
            for block in stage.blocks:
                finish_block(block, stage.arrays(block), schema, cutoffs, days, maps, writers, pool)
                shown.update(block.rows)

    return fitted, cutoffs, job.write_outputs(opts, fitted, cutoffs, report, rows_from_stage, days), report


def _save_vocabularies(opts: Options, stage: _Stage, vocabs: dict[str, Vocabulary], trains: list[np.ndarray],
                       result: dict[str, Any], pool: Executor) -> None:
    """Counts and writes every fitted vocabulary (vocab/<table>.json; a table per job on ``pool``,
    counted, ordered and written) and its table's rows into ``result``."""
    (opts.out_dir / layout.VOCAB_DIR).mkdir(exist_ok=True)

    def save(table: str, v: Vocabulary) -> int:
        count(stage, opts.schema, table, v, trains)
        f = opts.schema.features_of(table)[0]
        texts = v.vocabulary(f.min_count)
        if not len(texts):
            names = [x.name for x in opts.schema.features_of(table)]
            raise SchemaError(f"vocabulary feature(s) {names} (table {table!r}) have no value seen at least "
                              f"{f.min_count} time(s) in the training split: check the column and min_count")
        atomic_write_bytes(layout.vocab_file(opts.out_dir, table), vocab_json(texts))
        return f.oov_buckets + len(texts)

    # the largest tables first: they take longest, the others fill the other threads meanwhile
    jobs = {t: pool.submit(save, t, vocabs[t]) for t in sorted(vocabs, key=lambda t: -vocabs[t].size)}
    wait(jobs.values())
    for table in vocabs:  # (the first error in table order)
        result["vocab_rows"][table] = jobs[table].result()


def _fit_and_save(opts: Options, stage: _Stage, cutoffs: Optional[tuple[float, float]], days: Optional[Days],
                  distinct: dict[str, Interner], pool: Executor) -> tuple[dict[str, Any], IdMaps]:
    """The fit over the staged training rows, saved (vocab/, fit.json); the id maps of the
    vocabularies fitted."""
    schema = opts.schema
    fitted = [d for d in schema.dense if d.fitted]
    moments = {d.name: Moments(d.name) for d in fitted}
    result: dict[str, Any] = {"vocab_rows": {}, "scales": {}}
    vocabs, trains = fit(stage, schema, cutoffs, days, distinct, moments)
    if vocabs or fitted:
        _save_vocabularies(opts, stage, vocabs, trains, result, pool)
        result["scales"] = {d.name: moments[d.name].scale(d.fitted) for d in fitted}
    layout.write_fit(opts.out_dir, result)
    oov = {t: schema.features_of(t)[0].oov_buckets for t in vocabs}
    return result, IdMaps({t: v.id_map(oov[t]) for t, v in vocabs.items()})
