"""The read pass of staging.py: every record batch of the inputs, staged as far as it can be encoded
without fitted state (``read_blocks``), with its origin, in file order.

The file is parsed ahead on a reader thread; each batch's sparse features are staged on a thread
pool, a job per vocabulary table (its interner's ids follow first sight, so its jobs run one after
another: serial.py) and per other feature, up to STAGE_AHEAD batches ahead of the batch handed on;
its numbers (label, time, dense inputs) on the calling thread meanwhile. Errors come in block order,
and an interrupt returns only once no job touches an interner. What is staged, and what the later
passes make of it: staging.py.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from concurrent.futures import Executor, Future, wait
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa

from dlrm_dist.data.columnar import columns, encode, kernels, read
from dlrm_dist.data.columnar.fit import intern, staged_integers
from dlrm_dist.data.columnar.kernels import Interner
from dlrm_dist.data.columnar.locate import LINE_FIELD
from dlrm_dist.data.columnar.serial import Serial
from dlrm_dist.data.columnar.staged import Arrays, Block
from dlrm_dist.data.prefetch import Prefetcher
from dlrm_dist.features.schema import FeatureSchema, SparseFeature


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


def _stage_sparse(batch: pa.RecordBatch, schema: FeatureSchema, features: list[SparseFeature],
                  distinct: dict[str, Interner]) -> dict[str, tuple[np.ndarray, Optional[np.ndarray]]]:
    """A group of ``_jobs``' features of a record batch: each one's staged values and bag lengths."""
    out = {}
    for f in features:
        bags = _bags(batch, f)
        if f.kind != "vocab":
            ids = encode.encode_ids(batch, schema, f, bags, None)
        else:  # (criteo_tsv's integer values: no interner, staged as they are)
            ids = intern(distinct, f.table, bags.values) if f.table in distinct else staged_integers(bags.values)
        out[f.name] = ids, bags.lengths
    return out


def _stage_numbers(batch: pa.RecordBatch, schema: FeatureSchema) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A record batch's numeric columns and labels (an empty time or label cell is named by its line
    here, while the batch still knows where it came from)."""
    labels = encode.labels_of(batch, schema)
    if schema.split.by == "time":
        encode.times_of(batch, schema)
    numbers = {c: read.numbers(batch, c).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
               for c in read.numeric_columns(schema)}
    if LINE_FIELD in batch.schema.names:  # criteo_tsv: each row's line (pseudo-days; errors name it)
        numbers[LINE_FIELD] = batch.column(LINE_FIELD).to_numpy()
    return numbers, labels


@dataclasses.dataclass
class _Pending:
    """A record batch on its way into the stage: its sparse jobs, and its numbers (or their error)."""

    block: Block
    jobs: list[Future]
    numbers: Any  # _stage_numbers' result, or the exception it raised (raised in block order)

    def arrays(self, schema: FeatureSchema) -> Arrays:
        """The batch staged, once its jobs have ended; the first error is the numbers', then the
        sparse features' in schema order."""
        wait(self.jobs)
        if isinstance(self.numbers, BaseException):
            raise self.numbers
        done = {name: v for job in self.jobs for name, v in job.result().items()}
        numbers, labels = self.numbers
        return Arrays(numbers, {f.name: done[f.name][0] for f in schema.sparse},
                      {f.name: done[f.name][1] for f in schema.sparse}, labels)


READ_AHEAD = 6  # record batches parsed ahead of the staging (the parse goes on while numba loads its kernels)
STAGE_AHEAD = 2  # record batches whose sparse features are staged ahead of the one handed on (below)


def read_blocks(opts: Any, schema: FeatureSchema, bad: read.BadLines, distinct: dict[str, Interner],
                progress: Callable[[int], None], pool: Executor) -> Iterator[tuple[Block, Arrays]]:
    """Every record batch of every input, staged, with its origin, in file order. The file is parsed
    ahead on a reader thread (pyarrow parses without the GIL); the sparse features are staged on
    ``pool``'s threads, a job per table per batch, each table's jobs one after another (its
    interner's ids follow first sight) but up to STAGE_AHEAD batches ahead of the batch handed on,
    so that no thread waits for the largest table (a 2M-value one takes several times the others)
    while the next batch's other tables are there to stage; the numbers here, meanwhile. Returns
    (or raises) once no job touches the interners."""
    groups = _jobs(schema)
    queues = [Serial(pool) for _ in groups]
    pending: deque[_Pending] = deque()
    row0 = 0
    batches = Prefetcher(read.read_inputs(opts.inputs, schema, bad, workers=opts.workers), depth=READ_AHEAD)
    try:
        while True:
            try:
                path, first, batch = next(batches)
            except StopIteration:
                break
            except Exception:  # (a read error: the batches before it are handed on first, their errors first)
                while pending:
                    yield from _hand_on(pending, schema, progress)
                raise
            p = _Pending(Block(str(path), first, batch.num_rows, row0), [], None)
            pending.append(p)  # (before its jobs: an interrupt from here on leaves them to the final wait)
            for q, group in zip(queues, groups):
                p.jobs.append(q.submit(_stage_sparse, batch, schema, group, distinct))
            try:
                p.numbers = _stage_numbers(batch, schema)
            except Exception as e:  # (raised once the batches before it are handed on: their errors first)
                p.numbers = e
            row0 += batch.num_rows
            while len(pending) > STAGE_AHEAD:
                yield from _hand_on(pending, schema, progress)
        while pending:
            yield from _hand_on(pending, schema, progress)
    finally:
        for p in pending:  # (a failure or an interrupt: the jobs not started never run)
            for job in p.jobs:
                job.cancel()
        wait([job for p in pending for job in p.jobs])
        batches.close()  # (joins the reader thread: its file's read has ended when this returns)


def _hand_on(pending: deque[_Pending], schema: FeatureSchema,
             progress: Callable[[int], None]) -> Iterator[tuple[Block, Arrays]]:
    """The first pending batch, staged (it stays pending until handed on: an interrupt in the wait
    for its jobs leaves them to read_blocks' final wait)."""
    yield pending[0].block, pending[0].arrays(schema)
    progress(pending.popleft().block.rows)
