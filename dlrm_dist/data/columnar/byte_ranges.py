"""Reading a plain CSV/TSV file in byte ranges on the cores this process may use.

This module owns the parallel path of read.py's CSV/TSV reads: cutting a file into byte ranges
after line ends (LF or CR, where pyarrow's streaming reader ends its blocks, so the batches are
the same: ``cut_ranges``), reading each range with pread, parsing the ranges on a thread pool
(at most MAX_CHUNK_WORKERS threads, CHUNKS_AHEAD ranges ahead each) and handing their batches
on in file order with their malformed records and pyarrow's row numbers counted over the whole
file (``read_ranges``). A file that cannot be cut (gzip, a CSV holding a quote character, a
file of one block) is read by read.py's streaming reader instead. ``cpu_threads`` (the parse
threads this process may use) is also staging's thread count.

It is built on columns.py's pieces (the CSV handlers, the column checks, the typed reads), as
read.py is; read.py imports it (where it chooses the path), never the other way round.
"""

from __future__ import annotations

import itertools
import mmap
import os
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.csv as pa_csv

from dlrm_dist.data.columnar import columns, csv_kernel  # (read at call time: columns.BLOCK_BYTES is one knob for both readers)
from dlrm_dist.data.columnar.locate import COMPRESSED, is_gzip
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.errors import DlrmError
from dlrm_dist.features.schema import FeatureSchema

MAX_CHUNK_WORKERS = 8  # parse threads at most, whatever the host: bounds the memory in flight (below)
CHUNKS_AHEAD = 2  # byte ranges in flight per worker (each at most BLOCK_BYTES of text, plus its parse)
TOKENIZER = True  # csv_kernel's tokenizer first on each range (tests turn it off to compare with pyarrow's parse)
_LINE_END = re.compile(rb"[\r\n]")
_ROW_NUMBER = re.compile(r"Row #(\d+)")


def cpu_threads(cap: int = MAX_CHUNK_WORKERS) -> int:
    """Threads for CPU-bound work: the CPUs this process may run on (its affinity mask, which
    taskset and cgroup cpusets narrow; os.cpu_count() where the platform has no mask), at most
    ``cap``. The byte-range reader keeps CHUNKS_AHEAD ranges per thread in flight, so with the
    default cap at most 16 ranges of BLOCK_BYTES (128 MB of CSV text, plus their parsed tables)
    are held at once however many cores the host has (a cgroup CPU quota, which no mask shows,
    is covered by the cap too)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (no affinity masks on this platform)
        n = os.cpu_count() or 1
    return max(1, min(n, cap))


def _after_line_end(m: mmap.mmap, start: int, limit: int) -> int:
    r"""The offset after the last line end (``\n`` or ``\r``, as pyarrow's block chunker takes
    them) in m[start:limit], or ``start`` if there is none. A ``\r\n`` cut between its two bytes
    is cut there, as pyarrow does (the ``\n`` is an empty line at the next range's start). The
    ``\r`` search covers only the bytes after the last ``\n``: one pass over an LF file, not two."""
    lf = m.rfind(b"\n", start, limit)
    cr = m.rfind(b"\r", max(start, lf + 1), limit)
    return max(lf, cr) + 1 if max(lf, cr) >= 0 else start


def cut_ranges(path: Path, schema: FeatureSchema, fmt: str) -> Optional[list[tuple[int, int]]]:
    r"""The byte ranges of a plain CSV/TSV file's data rows, cut after a line end at most
    BLOCK_BYTES apart (where pyarrow's streaming reader ends its blocks: the same record batches),
    or None when the file cannot be cut: gzip, a CSV holding a quote character (a quoted cell may
    hold a newline, and only a read from the start knows which newlines are inside quotes), a
    file without a line end for several blocks (not lines of text), or a file of one block.

    A line ends at ``\n``, ``\r`` or ``\r\n`` (pyarrow's rule): the header ends at the first of
    ``\r`` and ``\n`` (with the ``\n`` of a ``\r\n``), and each range after its last one."""
    if path.name.lower().endswith(".gz") or path.name.endswith(COMPRESSED) or is_gzip(path):  # (not text bytes)
        return None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= columns.BLOCK_BYTES or size == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if fmt == "csv" and m.find(b'"') >= 0:
                return None
            start = 0
            if schema.input.header:  # the header: the first line that is not empty (no quotes here)
                while start < size and m[start: start + 1] in (b"\n", b"\r"):
                    start += 1
                found = _LINE_END.search(m, start)
                if found is None:
                    return None
                start = found.end() + (m[found.start(): found.start() + 2] == b"\r\n")
            cuts, limit = [], 0
            while start < size:
                limit += columns.BLOCK_BYTES  # pyarrow reads the file in blocks, each parsed to its last line end
                end = size if limit >= size else _after_line_end(m, start, limit)
                if end > start:
                    cuts.append((start, end))
                    start = end
                elif limit - start > 4 * columns.BLOCK_BYTES:  # no newline for that long: not lines of text
                    return None
    return cuts


@dataclass
class _Chunk:
    """One byte range parsed: its record batches (typed, origin to be stamped, or raw when the
    typed read failed: it is redone where the origin is known, and raises there), its malformed
    records (record numbers within the range, why) and the error that stopped its parse."""

    batches: list[pa.RecordBatch]
    typed: bool
    malformed: list[tuple[int, str]]
    error: Optional[Exception] = None


class _ChunkHandler:
    """A byte range's invalid-row callback: records the malformed record (strict: stops the parse)."""

    def __init__(self, strict: bool) -> None:
        self.strict, self.malformed = strict, []

    def __call__(self, row: pa_csv.InvalidRow) -> str:
        self.malformed.append((row.number, f"{row.actual_columns} fields, expected {row.expected_columns}"))
        return "error" if self.strict else "skip"


def _parse_chunk(path: Path, schema: FeatureSchema, fd: int, cut: tuple[int, int], read_opts: pa_csv.ReadOptions,
                 convert: pa_csv.ConvertOptions, delimiter: str, quote: Any, strict: bool,
                 tokens: Optional[csv_kernel.Plan] = None) -> _Chunk:
    """Reads and parses one byte range (a worker's job: the read, the tokenizer and pyarrow's
    parse release the GIL): by csv_kernel's tokenizer when ``tokens`` is its plan and it serves
    the range, else by pyarrow. The range is read into memory of its own, not mapped: memory
    stays bounded by the ranges in flight, whatever the file's size."""
    handler = _ChunkHandler(strict)
    parse = pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=handler, quote_char=quote)
    try:
        data = _read_range(path, fd, cut)
        fast = csv_kernel.parse(tokens, data) if tokens is not None else None
        if fast is not None:  # (else a line or cell it does not serve: pyarrow reads the range)
            return _Chunk([fast], True, [])
        table = pa_csv.read_csv(pa.BufferReader(data), read_options=read_opts, parse_options=parse,
                                convert_options=convert)
    except (pa.ArrowInvalid, OSError) as e:
        return _Chunk([], False, handler.malformed, e)
    finally:
        del parse
    raw = [b for b in table.to_batches() if b.num_rows]
    try:
        return _Chunk([columns.typed(b, schema, path, 0) for b in raw], True, handler.malformed)
    except DlrmError:  # redone with the batch's origin, where the error can name its line
        return _Chunk(raw, False, handler.malformed)


def _read_range(path: Path, fd: int, cut: tuple[int, int]) -> bytes:
    """The bytes of one range; a file that shrank since it was cut is refused (as criteo_tsv's
    ranges are), not parsed short: its missing rows would be lost without a word."""
    start, end = cut
    data = os.pread(fd, end - start, start)
    if len(data) != end - start:
        raise PreprocessError(f"{path}: shorter than when it was opened (bytes {start}..{end} expected, "
                              f"{start + len(data)} there); it changed while being read")
    return data


def _renumbered(e: Exception, records: int) -> Exception:
    """pyarrow's error from a range, its ``Row #N`` (counted from the range's start) counted from
    the file's start as a streaming read counts it: ``records`` rows and malformed lines (and the
    header) come before the range."""
    text = str(e)
    renumbered = _ROW_NUMBER.sub(lambda m: f"Row #{records + int(m.group(1))}", text)
    return e if renumbered == text else pa.ArrowInvalid(renumbered)


def read_ranges(path: Path, schema: FeatureSchema, fmt: str, wanted: list[str], bad: columns.BadLines,
                     cuts: list[tuple[int, int]]) -> Iterator[tuple[pa.RecordBatch, bool]]:
    """(batch, typed) of a file cut in byte ranges, parsed cpu_threads() at a time and yielded in
    file order. A range's malformed records are counted in ``bad`` in file order, numbered over
    the file: every record before the range is a row or a malformed line (no quotes: one record
    per non-empty line), so the count of both so far is the range's first record number."""
    handlers = columns.Handlers(path, schema, fmt, bad)
    try:
        handlers.names = names = columns.csv_names(path, schema, handlers)
    finally:
        handlers.wait_released()
    columns.check_columns(path, names, wanted)
    text = set(columns.text_columns(schema))
    read_opts = pa_csv.ReadOptions(block_size=columns.BLOCK_BYTES + (1 << 16), use_threads=False, column_names=names)
    convert = pa_csv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() if c in text else pa.float64()
                                                                          for c in wanted},
                                    null_values=["", *schema.input.null_values],
                                    strings_can_be_null=True, quoted_strings_can_be_null=False)
    quote = '"' if fmt == "csv" else False
    tokens = csv_kernel.plan(schema, names, handlers.delimiter) if TOKENIZER else None
    warm = csv_kernel.warm(tokens) if tokens is not None else None  # (pyarrow parses until the kernels are loaded)
    records = 1 if schema.input.header else 0
    pending: deque = deque()
    workers = cpu_threads()
    with open(path, "rb") as source, ThreadPoolExecutor(workers, thread_name_prefix="dlrm_dist-csv") as pool:
        def submit(cut: tuple[int, int]) -> None:
            pending.append(pool.submit(_parse_chunk, path, schema, source.fileno(), cut, read_opts, convert,
                                       handlers.delimiter, quote, bad.strict, tokens if warm and warm.is_set() else None))
        try:
            ranges = iter(cuts)
            for cut in itertools.islice(ranges, workers * CHUNKS_AHEAD):
                submit(cut)
            while pending:
                chunk = pending.popleft().result()
                for cut in itertools.islice(ranges, 1):
                    submit(cut)
                for number, why in chunk.malformed:
                    bad.add(path, schema, None if number is None else records + number, why)
                    if bad.fatal:
                        raise PreprocessError(bad.fatal)
                if chunk.error is not None:
                    raise handlers.error(_renumbered(chunk.error, records)) from None
                for batch in chunk.batches:
                    yield batch, chunk.typed
                records += sum(b.num_rows for b in chunk.batches) + len(chunk.malformed)
        finally:
            for job in pending:
                job.cancel()
            pool.shutdown(wait=True)  # (before the file closes: no worker reads it any more)
            if warm is not None:  # (no read ends, nor the process, while numba loads on its thread)
                warm.wait()
