"""The ``criteo_tsv`` input reader: raw Criteo TSV (plain or gzip) in parallel, as record batches.

Criteo lines have a fixed layout (label, 13 integer columns, 26 8-hex-digit columns, tab, no
header) that the compiled parser (tsv_kernel.py, its code in tsv_rows.py) reads faster than
pyarrow's CSV reader could. This module feeds it and hands its output on as the same stream every
other input gives (``read.read_inputs``): ``(file, first valid row, RecordBatch)`` with a
field per use of a column, ``num:<col>`` float64 and ``text:<col>`` int64 (the hex value),
null where a field is empty; and ``line:`` the 0-based line of each row in its file, which
names a row in errors (``locate.where``) and cuts pseudo-days (``encode.Days``).

- Plain files are cut into byte ranges ending at line ends, which worker processes (fork)
  read themselves; gzip files are decompressed here and their chunks handed out as bytes.
- Workers return arrays through shared memory (shared_blocks.py; pickling tens of MB per chunk through a pipe
  made the reading process the bottleneck); chunks come back in file order.
- ``encoder``: the workers also run the ONE encoder (encode.encode_batch, a pure function
  of a batch and the fitted schema) on their chunk, so that the main process only writes.
  An encoder error in a worker is raised again by the main process on the same chunk, which
  knows its line numbers: the message names the file and line like any other.
- The fused path (criteo_fused.py): when the schema's steps are only those the compiled kernel
  runs (``fused_plan``), the workers parse and encode in one pass straight into the
  shared-memory block the main process writes from, the encoder's output to the byte.
- Malformed lines are counted in ``BadLines`` with file:line; ``strict`` stops at the first.
"""

from __future__ import annotations

import gc
import gzip
import mmap
import multiprocessing as mp
import os
import secrets
import signal
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa

from dlrm_dist.data.columnar import shared_blocks as blocks
from dlrm_dist.data.columnar.columns import NUM, TEXT, uses
from dlrm_dist.data.columnar.criteo_fused import Fused, encode_fused, fused_encoded, fused_plan, fused_specs
from dlrm_dist.data.columnar.locate import LINE_FIELD, ORIGIN_FIRST, ORIGIN_PATH, is_gzip
from dlrm_dist.data.columnar.tsv_kernel import NUM_DENSE, ParsedChunk, padded, parse_chunk, row_capacity
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.builtin import criteo_columns
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import FeatureSchema

CHUNK_BYTES = 8 << 20


# -- where the bytes come from ------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    path: str
    start: int  # byte offset in the (decompressed) file
    end: int
    data: Optional[bytes] = None  # gzip: the bytes themselves

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(self.end - self.start)

    def read_padded(self, reuse: bool = False) -> np.ndarray:
        """The bytes and a 0 byte after them (the parser's end marker), read into one array;
        ``reuse``: into this process's read buffer (valid until its next such read)."""
        if self.data is not None:
            return padded(self.data)
        buf = _read_buffer(self.end - self.start + 1) if reuse else np.empty(self.end - self.start + 1, np.uint8)
        view, got = memoryview(buf)[:-1], 0
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.start)
            while got < len(view) and (n := f.readinto(view[got:])):
                got += n
        if got < len(view):
            raise PreprocessError(f"{self.path}: shorter than when it was opened (bytes {self.start}..{self.end} "
                                  "expected); it changed while being read")
        buf[-1] = 0
        return buf


_READ_BUFFER: list[np.ndarray] = []  # a worker's buffer for its chunks' bytes


def _read_buffer(nbytes: int) -> np.ndarray:
    """``nbytes`` of this process's read buffer, grown when too small. Reused from chunk to chunk,
    its pages stay mapped: a new 8 MB array per chunk is 2,048 page faults, each zeroing a page."""
    if not _READ_BUFFER or len(_READ_BUFFER[0]) < nbytes:
        _READ_BUFFER[:] = [np.empty(max(nbytes, CHUNK_BYTES + (1 << 20)), np.uint8)]
    return _READ_BUFFER[0][:nbytes]


def _line_end_after(f, pos: int, size: int) -> int:
    """The end of the line that crosses byte ``pos`` (or the file's end)."""
    f.seek(pos)
    while block := f.read(1 << 16):
        i = block.find(b"\n")
        if i >= 0:
            return f.tell() - len(block) + i + 1
    return size


def _plain_chunks(path: Path) -> Iterator[Chunk]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            end = _line_end_after(f, pos + CHUNK_BYTES, size) if pos + CHUNK_BYTES < size else size
            yield Chunk(str(path), pos, end)
            pos = end


def _gzip_chunks(path: Path) -> Iterator[Chunk]:
    try:
        with gzip.open(path, "rb") as f:
            pos, rest = 0, b""
            while block := f.read(CHUNK_BYTES):
                block = rest + block
                cut = block.rfind(b"\n") + 1
                if cut:
                    yield Chunk(str(path), pos, pos + cut, block[:cut])
                    pos += cut
                rest = block[cut:]
            if rest:
                yield Chunk(str(path), pos, pos + len(rest), rest)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut stream an EOFError
        raise PreprocessError(f"{path}: not a complete gzip file ({e}); recompress it") from None


def chunks(path: Path) -> Iterator[Chunk]:
    """Chunks of whole lines of the (decompressed) file."""
    return _gzip_chunks(path) if is_gzip(path) else _plain_chunks(path)


COUNT_WINDOW = 128 << 20  # bytes of a plain file mapped at a time by the line count
COUNT_PIECE = 1 << 20  # bytes compared at once (the comparison's temporary stays in the cache)


def _newlines(buf: np.ndarray) -> int:
    """LF bytes in ``buf``, by numpy (which releases the GIL: threads count at once, ~3 GB/s each;
    the compiled kernel's ahead-of-time build holds it, and the JIT's costs numba's set-up)."""
    return sum(int(np.count_nonzero(buf[s : s + COUNT_PIECE] == 10)) for s in range(0, len(buf), COUNT_PIECE))


def _count_plain(path: Path, threads: int) -> int:
    """Newlines of a plain file, counted in place (mapped, not copied) by ``threads`` threads, a
    window of COUNT_WINDOW bytes at a time: mapped pages count as the process's memory (its peak
    RSS would be the file's size) until the window is unmapped."""
    size = path.stat().st_size
    if size == 0:
        return 0
    total, last = 0, 10
    with open(path, "rb") as f, ThreadPoolExecutor(threads) as ex:
        for start in range(0, size, COUNT_WINDOW):  # (a multiple of mmap.ALLOCATIONGRANULARITY)
            length = min(COUNT_WINDOW, size - start)
            with mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=start) as mapped:
                mapped.madvise(mmap.MADV_SEQUENTIAL)
                buf = np.frombuffer(mapped, np.uint8)
                try:
                    cuts = [length * k // threads for k in range(threads + 1)]
                    total += sum(ex.map(lambda k: _newlines(buf[cuts[k] : cuts[k + 1]]), range(threads)))
                    last = int(buf[-1])
                finally:
                    del buf  # (the map cannot close while an array holds it)
    return total + (last != 10)  # a last line without newline counts


def count_lines(paths: list[Path], workers: int) -> list[int]:
    """Lines of each file (a last line without newline counts): a plain file's counted where the
    page cache holds it (~3 GB/s a thread, so no worker processes), a gzip file's as it is
    decompressed."""
    counts = []
    for path in paths:
        if not is_gzip(path):
            counts.append(_count_plain(path, max(1, min(workers, 4))))
            continue
        total, last = 0, b"\n"
        for chunk in _gzip_chunks(path):
            data = np.frombuffer(chunk.data, np.uint8)
            total += _newlines(data)
            last = chunk.data[-1:]
        counts.append(total + (last != b"\n"))
    return counts


# -- shared-memory blocks (shared_blocks.py) ----------------------------------------------------
def pooled_capacity() -> int:
    """Rows of a recycled block: every chunk of whole lines up to CHUNK_BYTES + 1 MB fits (so one
    layout serves them all, and the pages a use writes are those the last one did)."""
    return row_capacity(CHUNK_BYTES + (1 << 20))


# -- which field of a line each use reads ---------------------------------------------------------
def _positions(schema: FeatureSchema) -> dict[tuple[str, str], int]:
    """(use, column) -> field index; a use the fixed layout cannot serve is a SchemaError."""
    names = list(schema.input.columns or criteo_columns())
    found, problems = {}, []
    for use, column in uses(schema):
        if column not in names:
            problems.append(f"column {column!r} is not one of criteo_tsv's columns {names}")
            continue
        i = names.index(column)
        if use == NUM and i > NUM_DENSE:
            problems.append(f"column {column!r} is a hex categorical field of criteo_tsv: it cannot be a dense "
                            "feature, the label or the time column")
        elif use == TEXT and i <= NUM_DENSE:
            problems.append(f"column {column!r} is {'the label' if i == 0 else 'an integer field'} of criteo_tsv: "
                            "sparse features read the 26 hex fields")
        found[(use, column)] = i
    if problems:
        raise SchemaError("schema " + repr(schema.name) + ": " + "; ".join(problems))
    return found


def _column(parsed: ParsedChunk, i: int) -> pa.Array:
    if i == 0:
        return pa.array(parsed.labels.astype(np.float64))
    if i <= NUM_DENSE:
        return pa.array(parsed.dense[i - 1], mask=parsed.dense_missing[i - 1])
    j = i - 1 - NUM_DENSE
    return pa.array(parsed.sparse[j], mask=parsed.sparse_missing[j])


def _batch(parsed: ParsedChunk, positions: dict, path: str, first_row: int, first_line: int) -> pa.RecordBatch:
    arrays = [_column(parsed, i) for i in positions.values()] + [pa.array(parsed.rows + first_line)]
    names = [f"{use}:{column}" for use, column in positions] + [LINE_FIELD]
    meta = {ORIGIN_PATH: path, ORIGIN_FIRST: str(first_row)}
    return pa.RecordBatch.from_arrays(arrays, names=names).replace_schema_metadata(meta)


# -- worker side ----------------------------------------------------------------------------------
_JOB: dict[str, Any] = {}  # set before the fork: the positions, the encoder and the fused plan


@dataclass
class _Result:
    chunk: Chunk
    block: Optional[tuple[str, list]]  # the packed arrays (None: the encoder failed on the chunk)
    lines: int
    rows: int
    bad: list[tuple[int, str]]
    num_bad: int
    pooled: bool = False  # the block is a recycled one (the main process hands it back)


def _work_fused(chunk: Chunk, fused: Fused) -> _Result:
    """Parses and encodes a chunk in one pass into a new shared-memory block (the chunk's bytes are
    read into the worker's reused buffer: nothing refers to them once the kernel has run)."""
    data = chunk.read_padded(reuse=True)
    cap = row_capacity(len(data) - 1)
    pooled = cap <= pooled_capacity()  # (a chunk of one line longer than 1 MB gets a block of its own)
    specs = fused_specs(fused, pooled_capacity() if pooled else cap)
    name, arrays = (blocks.pooled_block(specs, _JOB["prefix"], _JOB["free"]) if pooled
                    else blocks.new_block(specs, _JOB["prefix"]))
    found, _ = encode_fused(data, fused, arrays)
    if found.rows <= 0:
        _JOB["free"].put(name) if pooled else blocks.unlink(name)
    return _Result(chunk, (name, specs) if found.rows > 0 else None, found.num_lines, found.rows, found.bad,
                   found.num_bad, pooled)


def _work(chunk: Chunk) -> _Result:
    if _JOB["fused"] is not None:
        return _work_fused(chunk, _JOB["fused"])
    parsed = parse_chunk(chunk.read_padded())
    rows = len(parsed.labels)
    encoder: Optional[Callable] = _JOB["encoder"]
    if not rows:
        return _Result(chunk, None, parsed.num_lines, 0, parsed.bad, parsed.num_bad)
    if encoder is None:
        arrays = [parsed.labels, parsed.dense, parsed.dense_missing, parsed.sparse, parsed.sparse_missing, parsed.rows]
    else:
        try:
            encoded = encoder(_batch(parsed, _JOB["positions"], chunk.path, 0, 0))
        except (PreprocessError, SchemaError):  # the main process runs it again and says where
            return _Result(chunk, None, parsed.num_lines, -1, parsed.bad, parsed.num_bad)
        arrays = [parsed.rows, *_split_fields(parsed, _JOB["positions"], _JOB["time"]), *encoded.arrays()]
    return _Result(chunk, blocks.pack(arrays, _JOB["prefix"]), parsed.num_lines, rows, parsed.bad, parsed.num_bad)


def _split_fields(parsed: ParsedChunk, positions: dict, time_column: Optional[str]) -> list[np.ndarray]:
    """The time column's values and missing mask, when the split needs them in the main process."""
    if time_column is None:
        return []
    i = positions[(NUM, time_column)]
    return [parsed.dense[i - 1], parsed.dense_missing[i - 1]] if i else [parsed.labels.astype(np.float64),
                                                                          np.zeros(len(parsed.labels), bool)]


# -- main side ------------------------------------------------------------------------------------
def _unpacked(result: _Result) -> ParsedChunk:
    labels, dense, dmiss, sparse, smiss, rows = blocks.unpack(*result.block)
    return ParsedChunk(dense, dmiss, sparse, smiss, labels, result.lines, result.bad, result.num_bad, rows)


def _report_bad(bad, path: str, first_line: int, result: _Result) -> None:
    for line, why in result.bad:
        bad.add_line(path, first_line + line + 1, why)
    bad.count += result.num_bad - len(result.bad)  # beyond the kernel's reported few: counted only


AHEAD = 3  # chunks in the workers' hands per worker, beyond the one the reading process takes next


def _in_order(pool, tasks: Iterator[Chunk]) -> Iterator[_Result]:
    """The workers' results in order, at most AHEAD per worker (+1) in flight: enough that no worker
    waits, and a bound on the blocks (and gzip bytes) alive when the reading process is the slower."""
    pending: deque = deque()
    window = AHEAD * pool._processes + 1  # noqa: SLF001 - the pool's size, as it was made
    workers = _worker_pids(pool)
    recycle = _JOB.get("recycle")
    for task in tasks:
        if recycle is not None:
            recycle.drain()  # the blocks freed since: the workers' next chunks go into them
        pending.append((task, pool.apply_async(_work, (task,))))
        if len(pending) >= window:
            yield _result(pool, workers, *pending.popleft())
    while pending:
        yield _result(pool, workers, *pending.popleft())


def _worker_pids(pool) -> set[int]:
    return {p.pid for p in pool._pool}  # noqa: SLF001 - multiprocessing.Pool has no public list of its workers


def _result(pool, workers: set[int], task: Chunk, pending: Any) -> _Result:
    """A task's result; a worker killed meanwhile (the OOM killer, a signal) is an error: the pool
    replaces it silently and the task it held would never finish, so the read would wait forever."""
    while True:
        try:
            return pending.get(timeout=1.0)
        except mp.TimeoutError:
            if _worker_pids(pool) != workers:
                raise PreprocessError(f"{task.path}: a worker process died (killed by a signal or the OOM killer?) "
                                      f"while the read had bytes {task.start}..{task.end} in flight; nothing was "
                                      "published: run it again (with fewer --workers if memory is short)") from None


def read_file(pool, path: Path, schema: FeatureSchema, bad, encoder: Optional[Callable] = None,
              decode: Optional[Callable] = None) -> Iterator[tuple]:
    """(batch, encoded or None) of ``path`` in order; a file without valid rows is refused."""
    positions = _JOB["positions"]
    line = row = 0
    for result in _in_order(pool, chunks(path)):
        _report_bad(bad, str(path), line, result)
        if result.rows < 0:  # the encoder failed in a worker: run it here, where the lines are known
            encoder(_batch(parse_chunk(result.chunk.read()), positions, str(path), row, line))
            raise PreprocessError(f"{path}: the encoder failed on bytes {result.chunk.start}..{result.chunk.end} in a "
                                  "worker but not when run again")  # (a bug, never bad data: said, not hidden)
        if result.rows:
            if encoder is None:
                yield _batch(_unpacked(result), positions, str(path), row, line), None
            else:
                yield decode(result, path, row, line)
        line += result.lines
        row += max(result.rows, 0)
    if row == 0:
        why = (f"all of its {line} line(s) are malformed (see the malformed lines reported)" if line
               else "it is empty")
        raise PreprocessError(f"{path}: {why}; every input file must hold data")


def _decoder(from_arrays: Callable) -> Callable:
    """Rebuilds (batch of the split's fields, encoded) from a worker's packed arrays."""
    time_column = _JOB["time"]

    def decode(result: _Result, path: Path, row: int, line: int) -> tuple:
        arrays = blocks.unpack(*result.block)
        lines, rest = arrays[0] + line, arrays[1:]
        fields, names = [pa.array(lines)], [LINE_FIELD]
        if time_column is not None:
            fields.insert(0, pa.array(rest[0], mask=rest[1]))
            names.insert(0, f"{NUM}:{time_column}")
            rest = rest[2:]
        batch = pa.RecordBatch.from_arrays(fields, names=names).replace_schema_metadata(
            {ORIGIN_PATH: str(path), ORIGIN_FIRST: str(row)})
        return batch, from_arrays(rest)
    return decode


def _fused_decoder(from_arrays: Callable) -> Callable:
    """Rebuilds (batch of the split's fields, encoded) from a fused worker's block."""
    fused, recycle = _JOB["fused"], _JOB["recycle"]

    def decode(result: _Result, path: Path, row: int, line: int) -> tuple:
        lines, flat = fused_encoded(fused, result.rows, blocks.unpack(*result.block, recycle if result.pooled else None))
        batch = pa.RecordBatch.from_arrays([pa.array(lines + line)], names=[LINE_FIELD]).replace_schema_metadata(
            {ORIGIN_PATH: str(path), ORIGIN_FIRST: str(row)})
        return batch, from_arrays(flat)
    return decode


def _forked_pool(workers: int) -> Any:
    """The worker processes, forked with every object the reading process holds frozen out of the
    garbage collector (gc.freeze, as Python's documentation advises before a fork): a collection
    in a worker then never walks the millions of objects it inherited (numba's, pyarrow's,
    pydantic's), nor copies their pages by touching them. The reading process unfreezes at once."""
    gc.freeze()
    try:
        return mp.get_context("fork").Pool(workers, initializer=_worker_signals)
    finally:
        gc.unfreeze()


def _worker_signals() -> None:
    """A worker leaves interrupts to the reading process (Ctrl-C reaches the whole process group):
    that process stops the read and terminates the pool (SIGTERM, which then ends a worker at once,
    whatever handler the fork copied)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def read_inputs(paths: list[Path], schema: FeatureSchema, bad, on_file: Optional[Callable[[Path], None]] = None,
                encoder: Optional[Callable] = None, from_arrays: Optional[Callable] = None,
                workers: Optional[int] = None) -> Iterator[tuple[Path, int, pa.RecordBatch, Any]]:
    """(file, first valid row in it, batch, encoded) over every input in order.

    Without ``encoder`` the batch holds every use of a column (encoded is None); with it the
    workers encode, and the batch holds only what the split needs (``line:``, the time column),
    ``from_arrays`` rebuilding the encoded result from its arrays. ``encoder`` is the one
    encoder for ``schema`` (encode.encode_batch with its vocabularies): where ``fused_plan``
    has a plan for the schema, the workers run that instead, which gives the same arrays (in
    recycled shared-memory blocks: one goes back to the workers when no array of it is left).
    """
    blocks.remove_stale_blocks()
    prefix = f"dlrm_dist_{os.getpid()}_{secrets.token_hex(4)}_"
    positions = _positions(schema)
    fused = fused_plan(schema, positions) if encoder is not None else None
    free = mp.get_context("fork").Queue() if fused else None  # names of blocks handed back
    recycle = blocks.Recycler(free) if fused else None
    _JOB.update(positions=positions, encoder=encoder, prefix=prefix, fused=fused, free=free, recycle=recycle,
                time=schema.split.column if schema.split.by == "time" else None)
    decode = None if encoder is None else _fused_decoder(from_arrays) if fused else _decoder(from_arrays)
    encode_fused(b"", fused) if fused else parse_chunk(b"")  # compiled code loaded once, before the fork
    lock = blocks.hold_read_lock(prefix)  # before any block exists: other reads' sweeps leave ours
    try:
        with _forked_pool(workers or max(1, os.cpu_count() or 1)) as pool:
            for path in paths:
                if on_file:
                    on_file(path)
                for batch, encoded in read_file(pool, path, schema, bad, encoder, decode):
                    yield path, int(batch.schema.metadata[ORIGIN_FIRST]), batch, encoded
    finally:  # the pool is gone: blocks it made that nobody read (an error, --strict) would outlive us,
        # and the recycled ones (arrays a caller still holds keep their pages: mapped, not named)
        if free is not None:
            recycle.open = False
            free.close()
            free.cancel_join_thread()
        for leftover in blocks.SHM_DIR.glob(prefix + "*"):  # (the lock file too)
            blocks.unlink(leftover.name)
        os.close(lock)
