"""Parsing raw Criteo TSV bytes in one compiled pass (numba), with every bad line reported.

Row layout: label, I1..I13 (integers, empty = missing, may be negative), C1..C26 (8 hex
digits, empty = missing). A line with the wrong number of fields, a label other than 0/1,
a non-integer count or a category that is not 8 hex digits is skipped and reported with
its line number and reason — never dropped silently.

Two kernels share one line parser (so they accept and reject exactly the same lines):

- ``parse_chunk`` returns the values as they are (and which are missing), column-major, for
  the one encoder (encode.py) to transform;
- ``fused_chunk`` runs a fused plan (criteo_fused.fused_plan, built from the schema by the
  generic encoder itself) as it parses: labels as float32, each dense feature through a
  table of its chain's results for the counts 0 .. TABLE_SIZE - 1 (other counts are left to
  the caller, which runs the generic chain on them), ids as ``value % buckets``, written
  straight into the caller's output arrays (shared memory: no copy on the way to the writer).

Why compiled: this is a byte-level state machine over ~250 bytes per row. Vectorised numpy
(field boundaries from separator positions, 8-byte SWAR decoding) reached ~0.8M rows/s per
core here; a single pass in numba is several times faster. The common line (label 0/1,
counts of at most 18 digits, categories of 0 or 8 hex digits, LF) takes a fast path that
reads each byte once; anything else is re-read by the exact general state machine.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Optional

import llvmlite.binding as llvm
import numba
import numpy as np

from dlrm_dist.data.columnar.tsv_rows import (BAD_BIG, BAD_FIELD_COUNT, BAD_INT, BAD_LABEL, MAX_REPORTED,
                                              MIN_LINE_BYTES, NUM_DENSE, NUM_FIELDS, NUM_SPARSE, TABLE_SIZE,
                                              count_newlines_jit, scan_fused_jit, scan_jit)


@dataclass
class ParsedChunk:
    """The valid rows of a chunk, and what was wrong with the others."""

    dense: np.ndarray  # (13, n) float64 counts as read (missing = 0)
    dense_missing: np.ndarray  # (13, n) bool
    sparse: np.ndarray  # (26, n) int64 32-bit hex values (missing = 0)
    sparse_missing: np.ndarray  # (26, n) bool
    labels: np.ndarray  # (n,) int32
    num_lines: int
    bad: list[tuple[int, str]] = field(default_factory=list)  # (0-based line in chunk, reason)
    num_bad: int = 0
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # line of each valid row



def _reason(code: int, arg: int) -> str:
    if code == BAD_FIELD_COUNT:
        return f"{arg} fields instead of {NUM_FIELDS}"
    if code == BAD_LABEL:
        return "label is not 0 or 1"
    if code == BAD_INT:
        return f"I{arg} is not an integer"
    if code == BAD_BIG:
        return f"I{arg} is an integer beyond 64 bits"
    return f"C{arg} is not 8 hex digits"


def _scratch() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One line's fields as the line parsers fill them: counts, missing counts, categories, missing ones."""
    return (np.zeros(NUM_DENSE, np.int64), np.zeros(NUM_DENSE, np.bool_), np.zeros(NUM_SPARSE, np.int64),
            np.zeros(NUM_SPARSE, np.bool_))


def _bad_buffers() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(MAX_REPORTED, np.int64), np.zeros(MAX_REPORTED, np.int64), np.zeros(MAX_REPORTED, np.int64)


def _bad_list(bad_line: np.ndarray, bad_code: np.ndarray, bad_arg: np.ndarray, nbad: int) -> list[tuple[int, str]]:
    return [(int(bad_line[k]), _reason(int(bad_code[k]), int(bad_arg[k]))) for k in range(min(nbad, MAX_REPORTED))]


def row_capacity(nbytes: int) -> int:
    """At most this many valid rows fit in ``nbytes`` bytes of lines."""
    return nbytes // MIN_LINE_BYTES + 1


def padded(data: bytes) -> np.ndarray:
    """``data`` and a 0 byte after it, as the kernels take bytes (criteo_tsv reads chunks so)."""
    buf = np.empty(len(data) + 1, np.uint8)
    buf[:-1] = np.frombuffer(data, np.uint8)
    buf[-1] = 0
    return buf


def _padded(data: bytes | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1 or not data.flags.c_contiguous or not len(data) or data[-1] != 0:
            raise ValueError("a chunk given as an array must be padded(...)'s: uint8 bytes and a 0 after them")
        return data
    return padded(data)


def parse_chunk(data: bytes | np.ndarray) -> ParsedChunk:
    """Parses whole lines of raw Criteo TSV (the values as read, column-major); ``data`` is bytes
    or ``padded``'s array of them."""
    buf = _padded(data)
    cap = count_newlines(buf) + 1
    dense, sparse = np.zeros((NUM_DENSE, cap), np.float64), np.zeros((NUM_SPARSE, cap), np.int64)
    dmiss, smiss = np.zeros((NUM_DENSE, cap), np.bool_), np.zeros((NUM_SPARSE, cap), np.bool_)
    labels = np.zeros(cap, np.int32)
    rows = np.zeros(cap, np.int64)
    bad = _bad_buffers()
    lines, out, nbad = _run("scan", buf, dense, dmiss, sparse, smiss, labels, rows, *bad, *_scratch())
    return ParsedChunk(dense[:, :out], dmiss[:, :out], sparse[:, :out], smiss[:, :out], labels[:out], int(lines),
                       _bad_list(*bad, nbad), int(nbad), rows[:out])


@dataclass(frozen=True)
class FusedPlan:
    """What ``fused_chunk`` computes per row (criteo_fused.fused_plan builds it from a schema)."""

    dense_field: np.ndarray  # (dense features,) int64: the count field (0..12) each reads
    dense_first: np.ndarray  # bool: the first feature reading its field (records its outliers)
    table_of: np.ndarray  # int64: each feature's row of ``tables``
    tables: np.ndarray  # (distinct chains, TABLE_SIZE) float32: the chain's result for counts 0..
    fills: np.ndarray  # (dense features,) float32: the chain's result for a missing count
    id_field: np.ndarray  # (id features,) int64: the category field (0..25) each reads, int32 ones first
    id_modulo: np.ndarray  # int64: buckets of each
    id_inverse: np.ndarray  # float64: 1 / id_modulo
    num_int32: int  # how many of the id features are stored as int32


@dataclass
class FusedOutput:
    """Where ``fused_chunk`` writes (arrays of ``row_capacity`` rows; the caller's memory)."""

    labels: np.ndarray  # (cap,) float32
    dense: np.ndarray  # (cap, dense features) float32
    ids32: np.ndarray  # (int32 id features, cap) int32
    ids64: np.ndarray  # (other id features, cap) int64
    rows: np.ndarray  # (cap,) int64: the line of each valid row in the chunk


@dataclass
class FusedChunk:
    """What ``fused_chunk`` found: valid rows (the first ``rows`` of the output) and counts outside
    the tables, by (row, count field, value), for the caller to run the chain on."""

    rows: int
    num_lines: int
    bad: list[tuple[int, str]]
    num_bad: int
    over_row: np.ndarray
    over_field: np.ndarray
    over_value: np.ndarray


def _fits(buf: np.ndarray, plan: FusedPlan, out: FusedOutput) -> None:
    """``out`` has room for every row the bytes may hold, laid out as ``plan`` writes (the kernel
    does not check its indices: a smaller array would be written past its end)."""
    cap, n32 = row_capacity(len(buf) - 1), plan.num_int32
    rows = (len(out.labels), len(out.rows), out.dense.shape[0], out.ids32.shape[-1], out.ids64.shape[-1])
    if (min(rows) < cap or out.ids32.shape[0] != n32 or out.ids64.shape[0] != len(plan.id_field) - n32
            or out.dense.shape[-1] != len(plan.dense_field)):
        raise ValueError(f"fused_chunk: outputs of {rows} rows, {out.ids32.shape[0]}+{out.ids64.shape[0]} id and "
                         f"{out.dense.shape[-1]} dense features for {cap} possible rows and the plan's "
                         f"{n32}+{len(plan.id_field) - n32} and {len(plan.dense_field)}")


def fused_chunk(data: bytes | np.ndarray, plan: FusedPlan, out: FusedOutput) -> FusedChunk:
    """Parses whole lines of raw Criteo TSV (bytes, or ``padded``'s array of them), encoding each
    valid row by ``plan`` into ``out``."""
    buf = _padded(data)
    _fits(buf, plan, out)
    over = len(buf) // MIN_LINE_BYTES * NUM_DENSE + NUM_DENSE  # at most one per count field of a row
    over_row, over_field, over_value = np.empty(over, np.int64), np.empty(over, np.int64), np.empty(over, np.int64)
    bad = _bad_buffers()
    lines, rows, nbad, nover = _run("scan_fused", buf, plan.dense_field, plan.dense_first, plan.table_of, plan.tables,
                                           plan.fills, plan.id_field, plan.id_modulo, plan.id_inverse, out.ids32, out.ids64,
                                           out.labels, out.dense, out.rows, over_row, over_field, over_value, *bad,
                                           *_scratch())
    return FusedChunk(int(rows), int(lines), _bad_list(*bad, nbad), int(nbad), over_row[:nover], over_field[:nover],
                      over_value[:nover])


def count_newlines(buf: np.ndarray) -> int:
    """LF bytes in ``buf`` (a uint8 array)."""
    return _run("count_newlines", buf)


# -- the same kernels compiled ahead of time (build_kernels.py) -------------------------------------
COMPILED_PREFIX = "_tsv_compiled_"
_SOURCES = ("tsv_rows.py", "tsv_kernel.py", "build_kernels.py")
# Each kernel's arguments as the build takes them, in order: (dtype, dimensions), C-contiguous. The
# one home of the build's signatures and of the checks before a call into it: the build does not
# check what it is given (a wrong dtype, rank or strided view would be read as raw memory).
_BAD_ARGS = (("i8", 1),) * 3  # bad_line, bad_code, bad_arg
_LINE_ARGS = (("i8", 1), ("b1", 1), ("i8", 1), ("b1", 1))  # _scratch()
ARGS = {
    "count_newlines": (("u1", 1),),
    "scan": (("u1", 1), ("f8", 2), ("b1", 2), ("i8", 2), ("b1", 2), ("i4", 1), ("i8", 1), *_BAD_ARGS, *_LINE_ARGS),
    "scan_fused": (("u1", 1), ("i8", 1), ("b1", 1), ("i8", 1), ("f4", 2), ("f4", 1), ("i8", 1), ("i8", 1), ("f8", 1),
                   ("i4", 2), ("i8", 2), ("f4", 1), ("f4", 2), ("i8", 1), ("i8", 1), ("i8", 1), ("i8", 1),
                   *_BAD_ARGS, *_LINE_ARGS),
}
RESULTS = {"count_newlines": "i8", "scan": "UniTuple(i8, 3)", "scan_fused": "UniTuple(i8, 4)"}
INPUTS = {"count_newlines": 1, "scan": 1, "scan_fused": 9}  # leading arguments only read; the rest are written


def compiled_name(sources: Optional[Path] = None) -> str:
    """The module name of a build of these kernels: a digest of what makes it (the kernels' code,
    this front and the build's, as in ``sources``, by default this package; the constants compiled
    in; numba's and numpy's versions; the CPU it targets), so that no other build is ever loaded."""
    digest = hashlib.sha256()
    for source in _SOURCES:
        digest.update(((sources or Path(__file__).parent) / source).read_bytes())
    cpu = (numba.config.CPU_NAME or llvm.get_host_cpu_name(),
           numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten())
    digest.update(repr((NUM_DENSE, NUM_SPARSE, TABLE_SIZE, numba.__version__, np.__version__, cpu)).encode())
    return COMPILED_PREFIX + digest.hexdigest()[:20]


class _Jit:
    """The kernels as numba's JIT compiles (or loads from its cache) them on first use."""

    count_newlines, scan, scan_fused = count_newlines_jit, scan_jit, scan_fused_jit


def _kernels() -> ModuleType | type:
    """The build of exactly this source for this CPU where there is one, else the JIT's."""
    try:
        return importlib.import_module(f"{__package__}.{compiled_name()}")
    except (ImportError, OSError):  # never built, or built from other sources (compiled_name differs), or
        return _Jit  # no sources to hash (an install without them)


def _run(kernel: str, *args: np.ndarray):
    """``kernel`` of the build (its arguments checked first: TypeError naming the one that is not
    as the build takes it) or of the JIT."""
    if COMPILED:
        for i, (a, (code, ndim)) in enumerate(zip(args, ARGS[kernel], strict=True)):
            _check(kernel, i, a, code, ndim, written=i >= INPUTS[kernel])
    return getattr(_KERNELS, kernel)(*args)


def _check(kernel: str, i: int, a: object, code: str, ndim: int, written: bool) -> None:
    if (isinstance(a, np.ndarray) and a.dtype == np.dtype(code) and a.ndim == ndim and a.flags.c_contiguous
            and (a.flags.writeable or not written)):
        return
    got = (f"{a.dtype} {a.ndim}-d, contiguous: {a.flags.c_contiguous}, writeable: {a.flags.writeable}"
           if isinstance(a, np.ndarray) else type(a).__name__)
    raise TypeError(f"{kernel}: argument {i} must be a C-contiguous{' writeable' if written else ''} {ndim}-d "
                    f"{np.dtype(code)} array, got {got}")


_KERNELS = _kernels()
COMPILED = _KERNELS is not _Jit
