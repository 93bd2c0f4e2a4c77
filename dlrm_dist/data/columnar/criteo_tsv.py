"""The ``criteo_tsv`` input reader: raw Criteo TSV (plain or gzip) in parallel, as record batches.

Criteo lines have a fixed layout (label, 13 integer columns, 26 8-hex-digit columns, tab, no
header) that the compiled parser (tsv_kernel.py) reads several times faster than pyarrow's
CSV reader could. This module feeds it and hands its output on as the same stream every
other input gives (``read.read_inputs``): ``(file, first valid row, RecordBatch)`` with a
field per use of a column, ``num:<col>`` float64 and ``text:<col>`` int64 (the hex value),
null where a field is empty; and ``line:`` the 0-based line of each row in its file, which
names a row in errors (``locate.where``) and cuts pseudo-days (``encode.Days``).

- Plain files are cut into byte ranges ending at line ends, which worker processes (fork)
  read themselves; gzip files are decompressed here and their chunks handed out as bytes.
- Workers return arrays through shared memory (pickling tens of MB per chunk through a pipe
  made the reading process the bottleneck); chunks come back in file order.
- ``encoder``: the workers also run the ONE encoder (encode.encode_batch, a pure function
  of a batch and the fitted schema) on their chunk, so that the main process only writes.
  An encoder error in a worker is raised again by the main process on the same chunk, which
  knows its line numbers: the message names the file and line like any other.
- The fused path: when the schema's steps are only those the compiled kernel runs (``fused_plan``:
  labels 0/1, dense chains of clip/log1p/standardize/minmax, ``int_modulo`` ids, split by day
  or at random), the workers parse and encode in one pass (tsv_kernel.fused_chunk) straight
  into the shared-memory block the main process writes from. The plan is computed BY the
  encoder: each dense chain's results for the counts 0..65535 and for a missing count come
  from encode.dense_matrix, and the counts outside that table go through it too, so the
  output is the encoder's to the byte (tests/data/test_criteo_fused.py); a chunk it cannot
  encode (an error) is encoded again the generic way, which names the line.
- Malformed lines are counted in ``BadLines`` with file:line; ``strict`` stops at the first.
"""

from __future__ import annotations

import _posixshmem
import gzip
import mmap
import multiprocessing as mp
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa

from dlrm_dist.data.columnar.locate import LINE_FIELD, ORIGIN_FIRST, ORIGIN_PATH
from dlrm_dist.data.columnar.tsv_kernel import (NUM_DENSE, TABLE_SIZE, FusedChunk, FusedOutput, FusedPlan,
                                                ParsedChunk, count_newlines, fused_chunk, padded, parse_chunk,
                                                row_capacity)
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.builtin import criteo_columns
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import FeatureSchema

CHUNK_BYTES = 8 << 20
NUM, TEXT = "num", "text"  # as read.py names its typed reads


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

    def read_padded(self) -> np.ndarray:
        """The bytes and a 0 byte after them (the parser's end marker), read into one array."""
        if self.data is not None:
            return padded(self.data)
        buf = np.empty(self.end - self.start + 1, np.uint8)
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


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


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


def _count_plain(path: Path, threads: int) -> int:
    """Newlines of a plain file, counted in place (mapped, not copied) by ``threads`` threads."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        mapped.madvise(mmap.MADV_SEQUENTIAL)
        buf = np.frombuffer(mapped, np.uint8)
        cuts = [size * k // threads for k in range(threads + 1)]
        try:
            if threads == 1:
                total = count_newlines(buf)
            else:  # the kernel releases the GIL
                with ThreadPoolExecutor(threads) as ex:
                    total = sum(ex.map(lambda k: count_newlines(buf[cuts[k] : cuts[k + 1]]), range(threads)))
            return total + (buf[-1] != 10)  # a last line without newline counts
        finally:
            del buf  # (the map cannot close while an array holds it)


def count_lines(paths: list[Path], workers: int) -> list[int]:
    """Lines of each file (a last line without newline counts): a plain file's counted where the
    page cache holds it (~5 GB/s a thread, so no worker processes), a gzip file's as it is
    decompressed."""
    counts = []
    for path in paths:
        if not is_gzip(path):
            counts.append(_count_plain(path, max(1, min(workers, 4))))
            continue
        total, last = 0, b"\n"
        for chunk in _gzip_chunks(path):
            data = np.frombuffer(chunk.data, np.uint8)
            total += count_newlines(data)
            last = chunk.data[-1:]
        counts.append(total + (last != b"\n"))
    return counts


# -- shared-memory handoff ------------------------------------------------------------------------
SHM_DIR = Path("/dev/shm")  # where Linux keeps POSIX shared memory: a stopped read's blocks are removed there


def _pack(arrays: list[np.ndarray]) -> tuple[str, list[tuple[str, tuple[int, ...]]]]:
    """Copies ``arrays`` into a new shared-memory block (in a worker); the main process owns it.
    Blocks are named after the read, so that those still in flight when it stops can be removed."""
    shm = shared_memory.SharedMemory(name=_JOB["prefix"] + secrets.token_hex(8), create=True,
                                     size=max(1, sum(a.nbytes for a in arrays)))
    offset = 0
    for a in arrays:
        np.ndarray(a.shape, a.dtype, buffer=shm.buf, offset=offset)[...] = a
        offset += a.nbytes
    resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001 - the main process unlinks it
    shm.close()
    return shm.name, [(a.dtype.str, a.shape) for a in arrays]


def _new_block(specs: list[tuple[str, tuple[int, ...]]]) -> tuple[str, list[np.ndarray]]:
    """A new shared-memory block (in a worker) holding arrays of ``specs``, for a kernel to write
    into: (its name, the arrays). Its pages are allocated as they are written, so an array sized
    for the most rows a chunk could hold costs only the rows it gets. The main process unlinks it."""
    name = _JOB["prefix"] + secrets.token_hex(8)
    size = sum(np.dtype(d).itemsize * int(np.prod(shape, dtype=np.int64)) for d, shape in specs)
    fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=0o600)
    try:
        os.ftruncate(fd, max(1, size))
        mapped = mmap.mmap(fd, max(1, size))
    finally:
        os.close(fd)
    return name, _views(mapped, specs)


def _views(mapped: mmap.mmap, specs: list[tuple[str, tuple[int, ...]]]) -> list[np.ndarray]:
    """The arrays of ``specs`` laid end to end in ``mapped`` (they keep the mapping alive)."""
    out, offset = [], 0
    for dtype, shape in specs:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        out.append(np.frombuffer(mapped, dt, count, offset).reshape(shape))
        offset += count * dt.itemsize
    return out


def _unpack(name: str, specs: list[tuple[str, tuple[int, ...]]]) -> list[np.ndarray]:
    """The arrays of a block, without a copy: the block is mapped, its name removed at once, and
    the mapping lives as long as the arrays do (numpy holds the mmap; the last array frees it)."""
    fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
    try:
        size = os.fstat(fd).st_size
        mapped = mmap.mmap(fd, size)
    finally:
        os.close(fd)
        _posixshmem.shm_unlink("/" + name.lstrip("/"))
    return _views(mapped, specs)


# -- which field of a line each use reads ---------------------------------------------------------
def _positions(schema: FeatureSchema) -> dict[tuple[str, str], int]:
    """(use, column) -> field index; a use the fixed layout cannot serve is a SchemaError."""
    from dlrm_dist.data.columnar.read import uses  # (read.py imports this module)

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


# -- the fused path ---------------------------------------------------------------------------------
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
    from dlrm_dist.data.columnar import encode, layout  # (encode imports read, which imports this module)

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


_NO_LENGTHS = np.zeros(0, np.int64)  # (Encoded.arrays' entry for a single-hot feature)


def _fused_specs(fused: Fused, cap: int) -> list[tuple[str, tuple[int, ...]]]:
    """The block of one chunk: line of each row, int64 ids, labels, dense, int32 ids (8-byte ones first)."""
    p = fused.plan
    return [("<i8", (cap,)), ("<i8", (len(p.id_field) - p.num_int32, cap)), ("<f4", (cap,)),
            ("<f4", (cap, len(p.dense_field))), ("<i4", (p.num_int32, cap))]


def _encode_outliers(fused: Fused, found: FusedChunk, dense: np.ndarray) -> None:
    """The dense slots the tables left (counts outside them): the encoder's chains on those counts."""
    if not len(found.over_row):
        return
    from dlrm_dist.data.columnar import encode

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


def encode_fused(data: bytes, fused: Fused, arrays: Optional[list[np.ndarray]] = None
                 ) -> tuple[FusedChunk, list[np.ndarray]]:
    """Parses and encodes whole lines by the fused plan into ``arrays`` (laid out as
    ``_fused_specs`` says; new ones when None). ``rows`` is -1 when the chain of a count outside
    the tables fails: the caller encodes the chunk again the generic way, which names the line."""
    if arrays is None:
        arrays = [np.empty(shape, dtype) for dtype, shape in _fused_specs(fused, row_capacity(len(data)))]
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


def _work_fused(chunk: Chunk, fused: Fused) -> _Result:
    """Parses and encodes a chunk in one pass into a new shared-memory block."""
    data = chunk.read_padded()
    specs = _fused_specs(fused, row_capacity(len(data) - 1))
    name, arrays = _new_block(specs)
    found, _ = encode_fused(data, fused, arrays)
    if found.rows <= 0:
        _posixshmem.shm_unlink("/" + name)
    return _Result(chunk, (name, specs) if found.rows > 0 else None, found.num_lines, found.rows, found.bad,
                   found.num_bad)


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
    return _Result(chunk, _pack(arrays), parsed.num_lines, rows, parsed.bad, parsed.num_bad)


def _split_fields(parsed: ParsedChunk, positions: dict, time_column: Optional[str]) -> list[np.ndarray]:
    """The time column's values and missing mask, when the split needs them in the main process."""
    if time_column is None:
        return []
    i = positions[(NUM, time_column)]
    return [parsed.dense[i - 1], parsed.dense_missing[i - 1]] if i else [parsed.labels.astype(np.float64),
                                                                          np.zeros(len(parsed.labels), bool)]


# -- main side ------------------------------------------------------------------------------------
def _unpacked(result: _Result) -> ParsedChunk:
    labels, dense, dmiss, sparse, smiss, rows = _unpack(*result.block)
    return ParsedChunk(dense, dmiss, sparse, smiss, labels, result.lines, result.bad, result.num_bad, rows)


def _report_bad(bad, path: str, first_line: int, result: _Result) -> None:
    for line, why in result.bad:
        bad.add_line(path, first_line + line + 1, why)
    bad.count += result.num_bad - len(result.bad)  # beyond the kernel's reported few: counted only


def read_file(pool, path: Path, schema: FeatureSchema, bad, encoder: Optional[Callable] = None,
              decode: Optional[Callable] = None) -> Iterator[tuple]:
    """(batch, encoded or None) of ``path`` in order; a file without valid rows is refused."""
    positions = _JOB["positions"]
    line = row = 0
    for result in pool.imap(_work, chunks(path)):
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
        arrays = _unpack(*result.block)
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
    fused = _JOB["fused"]

    def decode(result: _Result, path: Path, row: int, line: int) -> tuple:
        lines, flat = fused_encoded(fused, result.rows, _unpack(*result.block))
        batch = pa.RecordBatch.from_arrays([pa.array(lines + line)], names=[LINE_FIELD]).replace_schema_metadata(
            {ORIGIN_PATH: str(path), ORIGIN_FIRST: str(row)})
        return batch, from_arrays(flat)
    return decode


def read_inputs(paths: list[Path], schema: FeatureSchema, bad, on_file: Optional[Callable[[Path], None]] = None,
                encoder: Optional[Callable] = None, from_arrays: Optional[Callable] = None,
                workers: Optional[int] = None) -> Iterator[tuple[Path, int, pa.RecordBatch, Any]]:
    """(file, first valid row in it, batch, encoded) over every input in order.

    Without ``encoder`` the batch holds every use of a column (encoded is None); with it the
    workers encode, and the batch holds only what the split needs (``line:``, the time column),
    ``from_arrays`` rebuilding the encoded result from its arrays. ``encoder`` is the one
    encoder for ``schema`` (encode.encode_batch with its vocabularies): where ``fused_plan``
    has a plan for the schema, the workers run that instead, which gives the same arrays.
    """
    prefix = f"dlrm_dist_{os.getpid()}_{secrets.token_hex(4)}_"
    positions = _positions(schema)
    fused = fused_plan(schema, positions) if encoder is not None else None
    _JOB.update(positions=positions, encoder=encoder, prefix=prefix, fused=fused,
                time=schema.split.column if schema.split.by == "time" else None)
    decode = None if encoder is None else _fused_decoder(from_arrays) if fused else _decoder(from_arrays)
    encode_fused(b"", fused) if fused else parse_chunk(b"")  # compiled code loaded once, before the fork
    try:
        with mp.get_context("fork").Pool(workers or max(1, os.cpu_count() or 1)) as pool:
            for path in paths:
                if on_file:
                    on_file(path)
                for batch, encoded in read_file(pool, path, schema, bad, encoder, decode):
                    yield path, int(batch.schema.metadata[ORIGIN_FIRST]), batch, encoded
    finally:  # the pool is gone: blocks it made that nobody read (an error, --strict) would outlive us
        for leftover in SHM_DIR.glob(prefix + "*"):
            _posixshmem.shm_unlink("/" + leftover.name)
