"""One read of the inputs: every row staged as far as it can be encoded without fitted state,
then the time cut-offs, the fit and the write from binary passes over the staged columns.

The read pass (staging_read.py) runs the one encoder (encode.py) on every record batch and
appends, under ``DIR/.staging.partial/``:

- each numeric column (label, time, dense inputs) as read: float64, NaN where the cell is
  missing (read.py refuses every non-finite cell, so NaN means missing and nothing else);
- every row's label as encode.labels_of gave it (float32 0/1: a categorical label's text is
  not among the numeric columns);
- each identity/hash feature's finished ids (int64);
- each vocabulary feature's values as their ids among the table's distinct texts (int32, -1 for
  a missing value; kernels.Interner: bounded by the distinct values, not the rows; two texts
  with one FNV-1a 64 hash are an error naming both), and, for multi-hot features, every row's
  bag length.

Every record batch's origin (file, first row, row count; criteo_tsv rows: their lines) is kept,
so the later passes walk the same blocks: the dense moments merge block by block exactly as a
pass over the input would (the scales are bit-for-bit the same) and an error still names the
file and line.

After the read, from the staged columns (staged.py):

- the time cut-offs from the staged times (8 bytes per row: exact quantiles);
- every row's split, staged too (1 byte per row), and the dense moments over the training rows,
  block by block;
- each vocabulary table's counts over the training rows (a job per table on the thread pool, by
  kernels.count_ids over the staged ids): the tables' sizes, so the split writers can open;
- the write, a job per file kind on the pool, each walking every block in order: the rows'
  dense matrix (fitted scales applied) and labels, and each feature's ids. Meanwhile each
  vocabulary is ordered (kernels.text_order, or as numbers for criteo_tsv's integer values) and
  written, the largest first; once all are ordered, the vocabulary features' ids (model ids from
  the distinct ids, values not in the vocabulary to an OOV bucket by the same
  ``fnv1a % oov_buckets`` rule as encode.py), to their splits' files (layout.SplitWriter; by day,
  the last day's to the holdout), while the vocabulary files are written; once all are, fit.json.

The staging directory is removed at the end, on failure too. A run whose fitted state is
already known (a rerun after fit.json, or a schema with nothing to fit) and whose split needs no
cut-offs finishes every block as it is read, with no staging at all.

This is the one fit of every input format and split (random, time, day with pseudo-days, a day
partition); preprocess.py's dispatcher streams only criteo_tsv jobs with nothing to fit.
The fit's state (moments, vocabularies, id maps, the vocabulary files) is fit.py's.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator, Optional

import numpy as np

from dlrm_dist.data.columnar import byte_ranges, encode, job, layout, read
from dlrm_dist.data.columnar.encode import Days
from dlrm_dist.data.columnar.job import (Options, Report, bar, fitted_schema, known_fit, targets, time_cutoffs,
                                         vocab_tables)
from dlrm_dist.data.columnar.fit import IdMaps, IntVocabulary, Moments, Vocabulary, interners, vocab_json
from dlrm_dist.data.columnar.kernels import Interner
from dlrm_dist.data.columnar.staged import Arrays, Block, Stage, numeric_batch
from dlrm_dist.data.columnar.staging_read import read_blocks
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import FeatureSchema, SparseFeature
from dlrm_dist.fileio import atomic_write_bytes


# -- splits and fit ---------------------------------------------------------------------------------
def split_rows(stage: Stage, schema: FeatureSchema, cutoffs: Optional[tuple[float, float]], days: Optional[Days],
               moments: dict[str, Moments]) -> None:
    """Every block's rows' splits, staged (the fit's counts and the write's jobs read them), and the
    dense ``moments`` over the training rows, block by block (they merge in block order, as a
    pass over the input would)."""
    fitted = [d for d in schema.dense if d.name in moments]
    for block in stage.blocks:
        batch = numeric_batch(block, stage.numbers_of(block))
        split = encode.split_of(batch, schema, block.row0, cutoffs, days)
        stage.splits.append(split)
        train = split == 0
        if fitted and train.any():
            for d in fitted:  # on the whole block, so that an error names the right line
                moments[d.name].add(encode.dense_raw(batch, d, schema)[train])
    stage.close_splits()


def count(stage: Stage, schema: FeatureSchema, table: str, vocab: Vocabulary | IntVocabulary) -> None:
    """A table's vocabulary counts over every block's training rows (one job per table: the
    tables' counts run at once)."""
    features = schema.features_of(table)
    for block in stage.blocks:
        train = stage.split(block) == 0
        if train.any():
            for f in features:
                values, lengths = stage.sparse(block, f)
                vocab.add(values, train, lengths)


# -- the finishing pass ----------------------------------------------------------------------------------
def finish_block(block: Block, arrays: Arrays, schema: FeatureSchema, cutoffs: Optional[tuple[float, float]],
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
    for k, writer in targets(writers):
        writer.append(split == k, dense, labels, ids)


class _Stopped(Exception):
    """A write job ended early: another job failed, or the run was interrupted (that error is the one
    reported)."""


def _blocks(stage: Stage, stop: threading.Event) -> Iterator[Block]:
    """The stage's blocks in order, for a write job: it ends at the next block once ``stop`` is set."""
    for block in stage.blocks:
        if stop.is_set():
            raise _Stopped
        yield block


def write_rows(stage: Stage, schema: FeatureSchema, writers: dict[str, Any], progress: Callable[[int], None],
               stop: threading.Event) -> None:
    """Every block's dense rows (fitted steps applied) and labels (encoded as read: a categorical
    label's text is not staged) to their splits' files (a day split's last day to the holdout's)."""
    for block in _blocks(stage, stop):
        dense = encode.dense_matrix(numeric_batch(block, stage.numbers_of(block)), schema)
        labels, split = np.asarray(stage.labels_of(block)), stage.split(block)
        for k, writer in targets(writers):
            writer.append_rows(split == k, dense, labels)
        progress(block.rows)


def write_feature(stage: Stage, f: SparseFeature, maps: Optional[IdMaps], writers: dict[str, Any],
                  progress: Callable[[int], None], stop: threading.Event) -> None:
    """Every block's ids of ``f`` to their splits' files: a vocabulary feature's model ids by
    ``maps``, any other's (``maps`` None) as staged (finished at the read)."""
    for block in _blocks(stage, stop):
        values, lengths = stage.sparse(block, f)
        ids = maps.ids(f, values) if maps is not None else np.asarray(values)
        split = stage.split(block)
        for k, writer in targets(writers):
            writer.append_ids(split == k, f.name, ids, lengths)
        progress(block.rows)


class _Progress:
    """The write bar, advanced in rows by several jobs at once (each of ``parts`` jobs walks every row)."""

    def __init__(self, shown: Any, parts: int) -> None:
        self.shown, self.parts, self.lock = shown, parts, threading.Lock()

    def __call__(self, rows: int) -> None:
        with self.lock:
            self.shown.update(rows / self.parts)


def _write(stage: Stage, schema: FeatureSchema, fitting: Optional["_Fit"], maps: Optional[IdMaps],
           writers: dict[str, Any], pool: Executor, progress: Callable[[int], None]) -> None:
    """The write pass from the stage, a job per file kind on ``pool``: the rows (dense, labels) and
    each feature's ids, every job in block order. With a fit (``fitting``; else ``maps``, the
    vocabularies a rerun read), the vocabularies are ordered and written first (the largest first:
    they take longest) while the rows and the features without one are written; the vocabulary
    features once every vocabulary is ordered; fit.json once every vocabulary file is written.

    ``pool`` must run jobs in the order given (a ThreadPoolExecutor does) and this must not run on
    it: a job waits only on jobs submitted before it, so none can wait on one not yet started. The
    first job to fail stops the others at their next block and the jobs not started are cancelled,
    as on an interrupt; the error raised is the first in job order (a vocabulary's first). Returns
    once no job runs (the writers are closed, or aborted, after this)."""
    stop = threading.Event()

    def on_done(job: Future) -> None:
        if not job.cancelled() and job.exception() is not None:
            stop.set()

    jobs: list[Future] = []

    def submit(fn: Callable[..., None], *args: Any) -> None:
        jobs.append(pool.submit(fn, *args, stop))
        jobs[-1].add_done_callback(on_done)

    saves = fitting.saves if fitting is not None else {}
    try:
        if fitting is not None:
            fitting.save(on_done, stop)  # (submitted first: the pool takes jobs in order, so they start first)
        submit(write_rows, stage, schema, writers, progress)
        for f in schema.sparse:
            if f.kind != "vocab":
                submit(write_feature, stage, f, None, writers, progress)
        if fitting is not None:
            maps = fitting.saved(stop)
        for f in schema.sparse:
            if f.kind == "vocab" and not stop.is_set():
                submit(write_feature, stage, f, maps, writers, progress)
        if fitting is not None:
            fitting.finish(stop)
    except BaseException:
        stop.set()
        for job in [*saves.values(), *jobs]:
            job.cancel()
        raise
    finally:
        wait([*jobs, *saves.values()])
    for job in [*saves.values(), *jobs]:  # (the first error in job order; the stopped jobs' ends are not errors)
        error = None if job.cancelled() else job.exception()
        if error is not None and not isinstance(error, _Stopped):
            raise error


# -- the passes -------------------------------------------------------------------------------------------
def run(opts: Options, days: Optional[Days]) -> tuple[FeatureSchema, Optional[tuple[float, float]], dict[str, Any],
                                                     Report]:
    """The whole conversion of a (locked, checked) job: (fitted schema, cut-offs, splits, report)."""
    out, schema = opts.out_dir, opts.schema
    done = known_fit(opts)
    with ThreadPoolExecutor(max_workers=byte_ranges.cpu_threads(), thread_name_prefix="dlrm_dist-stage") as pool:
        if schema.split.by != "time" and done is not None:
            return _inline(opts, done, days, pool)
        distinct = interners(schema)
        stage = Stage(out, schema, set(distinct))
        try:
            return _staged(opts, stage, distinct, done, days, pool)
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


def _staged(opts: Options, stage: Stage, distinct: dict[str, Interner], done: Optional[dict[str, Any]],
            days: Optional[Days], pool: Executor) -> tuple:
    """One read into the stage; the cut-offs, every row's split, the fit and the write from it."""
    schema, report = opts.schema, Report()
    bad = read.BadLines(strict=opts.strict)
    with bar(opts, "read") as shown:
        for block, arrays in read_blocks(opts, schema, bad, distinct, shown.update, pool):
            stage.append(block, arrays)
    stage.close()
    last = stage.blocks[-1] if stage.blocks else None
    rows = last.row0 + last.rows if last else 0
    report.read(rows, bad)
    cutoffs = time_cutoffs(schema, stage.times(), report) if schema.split.by == "time" else None
    fitting = _Fit(opts, stage, distinct, pool) if done is None else None
    split_rows(stage, schema, cutoffs, days, fitting.moments if fitting is not None else {})
    maps = None
    if fitting is not None:
        done = fitting.count()
    else:  # a rerun after the fit: the vocabularies written then
        maps = IdMaps.from_vocabularies(opts.out_dir, schema, distinct)
    fitted = fitted_schema(schema, done)

    def rows_from_stage(opts: Options, schema: FeatureSchema, cutoffs: Any, report: Report,
                        writers: dict[str, Any], days: Optional[Days]) -> None:
        with bar(opts, "write") as shown:
            _write(stage, schema, fitting, maps, writers, pool, _Progress(shown, 1 + len(schema.sparse)))

    return fitted, cutoffs, job.write_outputs(opts, fitted, cutoffs, report, rows_from_stage, days), report


def _cancel(job: Future) -> None:
    """Cancels a Future no executor runs, as done as an executor's cancelled job (concurrent.futures.
    wait counts a cancelled Future done only once it is told so, which an executor does in its turn)."""
    if job.cancel():
        job.set_running_or_notify_cancel()


class _Fit:
    """The fit of a run over its staged training rows: the dense moments (``split_rows`` adds to them),
    every vocabulary table's counts (``count``: their sizes, so the writers can open), then each
    table's order and file (``save``, during the write: ``saved`` gives the id maps once all are
    ordered) and fit.json once all are written (``finish``)."""

    def __init__(self, opts: Options, stage: Stage, distinct: dict[str, Interner], pool: Executor) -> None:
        self.opts, self.stage, self.pool = opts, stage, pool
        schema = opts.schema
        self.moments = {d.name: Moments(d.name) for d in schema.dense if d.fitted}
        self.vocabs = {t: Vocabulary(schema.features_of(t)[0], distinct[t]) if t in distinct else
                       IntVocabulary(schema.features_of(t)[0]) for t in vocab_tables(schema)}
        self.result: dict[str, Any] = {"vocab_rows": {}, "scales": {}}
        self.saves: dict[str, Future] = {}  # each table's save job (its file written when it ends)
        self.ready: dict[str, Future] = {}  # each table's id map, out before its file is written

    def _largest_first(self) -> list[str]:
        """The tables by their distinct values, the most first (they take longest: the others fill the
        other threads meanwhile); an integer table's are known once counted (before: table order)."""
        return sorted(self.vocabs, key=lambda t: -self.vocabs[t].size)

    def count(self) -> dict[str, Any]:
        """Every table's counts (a job per table) and the dense scales: fit.json's content."""
        schema = self.opts.schema
        jobs = {t: self.pool.submit(count, self.stage, schema, t, self.vocabs[t]) for t in self._largest_first()}
        wait(jobs.values())
        for table, v in self.vocabs.items():  # (the first error in table order)
            jobs[table].result()
            f = schema.features_of(table)[0]
            kept = v.kept_count(f.min_count)
            if not kept:
                names = [x.name for x in schema.features_of(table)]
                raise SchemaError(f"vocabulary feature(s) {names} (table {table!r}) have no value seen at least "
                                  f"{f.min_count} time(s) in the training split: check the column and min_count")
            self.result["vocab_rows"][table] = f.oov_buckets + kept
        self.result["scales"] = {d.name: self.moments[d.name].scale(d.fitted) for d in schema.dense if d.fitted}
        return self.result

    def save(self, on_done: Callable[[Future], None], stop: threading.Event) -> None:
        """Submits every vocabulary's ordering and file (vocab/<table>.json), a job per table on the
        pool, each reporting to ``on_done`` when it ends; one that starts once ``stop`` is set does
        nothing (raises _Stopped). A table's id map is ready (``saved``) before its file is written."""
        (self.opts.out_dir / layout.VOCAB_DIR).mkdir(exist_ok=True)
        for t in self._largest_first():  # (each kept as submitted: an interrupt here still waits for it)
            self.ready[t] = ready = Future()
            self.saves[t] = self.pool.submit(self._save, t, stop, ready)
            self.saves[t].add_done_callback(on_done)
            self.saves[t].add_done_callback(lambda job, ready=ready: job.cancelled() and _cancel(ready))

    def _save(self, table: str, stop: threading.Event, ready: Future) -> None:
        """Orders a table's vocabulary, makes its id map ``ready``, then writes its file."""
        try:
            if stop.is_set():
                raise _Stopped
            f = self.opts.schema.features_of(table)[0]
            vocab = self.vocabs[table].vocabulary(f.min_count)
            ready.set_result(self.vocabs[table].id_map(f.oov_buckets))
        except BaseException as e:
            ready.set_exception(e)
            raise
        # (the id map is out: the features' ids are written meanwhile; the largest table's text,
        # a few tenths of a second on 2M values, was the write's critical path before them)
        atomic_write_bytes(layout.vocab_file(self.opts.out_dir, table), vocab_json(vocab))

    def saved(self, stop: threading.Event) -> Optional[IdMaps]:
        """Waits for every table's id map (``save``'s jobs write the files on) and returns them. Once
        a job has failed (``stop``) it cancels the saves not started and returns None: ``_write``
        reports the error."""
        wait(self.ready.values(), return_when=FIRST_EXCEPTION)  # (a save after a failure: _Stopped)
        if stop.is_set():
            for job in self.saves.values():
                job.cancel()
            return None
        return IdMaps({t: self.ready[t].result() for t in self.vocabs})

    def finish(self, stop: threading.Event) -> None:
        """Waits for ``save``'s files, then writes fit.json (the fit complete: a rerun does not redo
        it), unless a job has failed (a job failing after this check may still find fit.json
        written: the fit is complete either way)."""
        wait(self.saves.values())
        if not stop.is_set() and all(not j.cancelled() and j.exception() is None for j in self.saves.values()):
            layout.write_fit(self.opts.out_dir, self.result)
