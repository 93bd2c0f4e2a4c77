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
from numba import njit

from dlrm_dist.features.builtin import CRITEO_NUM_DENSE, CRITEO_NUM_SPARSE

NUM_DENSE, NUM_SPARSE = CRITEO_NUM_DENSE, CRITEO_NUM_SPARSE
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
MAX_REPORTED = 1000
MIN_LINE_BYTES = NUM_FIELDS  # a valid line: a 1-digit label and 39 tabs (its newline aside)
TABLE_SIZE = 1 << 16  # counts 0..65535 looked up (~99% of Criteo's); others go through the chain itself
# Reason codes written by the kernel.
BAD_FIELD_COUNT, BAD_LABEL, BAD_INT, BAD_HEX, BAD_BIG = 1, 2, 3, 4, 5


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


# Value of each byte as a hex digit, -1 for any other byte: one table look-up per character.
_HEX_VALUE = np.full(256, -1, dtype=np.int64)
_HEX_VALUE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_VALUE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_INT64_MAX_DIGITS = np.frombuffer(b"9223372036854775807", np.uint8).copy()
# Value of each pair of bytes (first | second << 8) as two hex digits, -1 unless both are: four
# look-ups per category instead of eight (the pairs a file uses fill a few cache lines).
_HEX_PAIR = np.full(1 << 16, -1, dtype=np.int16)
_digits = np.flatnonzero(_HEX_VALUE >= 0)
_HEX_PAIR[(_digits[:, None] | (_digits[None, :] << 8)).ravel()] = (_HEX_VALUE[_digits][:, None] * 16
                                                                  + _HEX_VALUE[_digits][None, :]).ravel()
del _digits


# The per-row code runs without numba's runtime (``_nrt=False``): with it, every call that takes an
# array (each line's parse takes five) increments and decrements the array's reference count
# with atomic instructions, measured at 10-15% of the fused kernel's samples (perf). Without it
# nothing is allocated in compiled code: the callers pass the scratch arrays (``_scratch``).
_ROW_CODE = dict(cache=True, nogil=True, _nrt=False)


@njit(**_ROW_CODE)
def _fits_int64(buf, p, e) -> bool:  # pragma: no cover - compiled
    """Whether the 19 digits buf[p:e] are at most 9223372036854775807 (compared digit by digit)."""
    for k in range(19):
        if buf[p + k] != _INT64_MAX_DIGITS[k]:
            return buf[p + k] < _INT64_MAX_DIGITS[k]
    return True


@njit(**_ROW_CODE)
def _line_general(buf, i, n, ints, imiss, hexes, hmiss):  # pragma: no cover - compiled
    """Any line from byte ``i``: (next line's start, reason code or 0, its argument, label).

    (Finding a field's end first and then parsing it: the rules for CRLF, 19-digit counts and
    the first error of a line in one place.)
    """
    f = 0
    code = 0
    arg = 0
    label = 0
    more = True
    while more:  # one field per iteration
        s = i
        while i < n and buf[i] != 9 and buf[i] != 10:
            i += 1
        e = i
        if e > s and buf[e - 1] == 13 and (i >= n or buf[i] == 10):
            e -= 1  # CRLF line end
        if code == 0 and f < NUM_FIELDS:
            if f <= NUM_DENSE:  # label or integer count
                neg = e > s and buf[s] == 45
                p = s + 1 if neg else s
                v = 0
                ok = not (neg and p == e)
                big = False
                if ok and e - p >= 19:  # int64 holds every 18-digit number and most of 19 digits
                    digits = True
                    for k in range(p, e):
                        if buf[k] < 48 or buf[k] > 57:
                            digits = False
                            break
                    big = digits and (e - p > 19 or not _fits_int64(buf, p, e))
                    ok = digits and not big
                while ok and p < e:
                    c = buf[p]
                    if c < 48 or c > 57:
                        ok = False
                    v = v * 10 + (c - 48)
                    p += 1
                if f == 0:
                    if not ok or e == s or neg or v > 1:
                        code = BAD_LABEL
                    else:
                        label = v
                elif not ok:
                    code = BAD_BIG if big else BAD_INT
                    arg = f
                else:
                    ints[f - 1] = -v if neg else v
                    imiss[f - 1] = e == s
            else:  # category: 8 hex digits or empty
                v = 0
                if e - s == 8:
                    for p in range(s, e):
                        d = _HEX_VALUE[buf[p]]
                        if d < 0:
                            code = BAD_HEX
                            arg = f - NUM_DENSE
                            break
                        v = v * 16 + d
                elif e != s:
                    code = BAD_HEX
                    arg = f - NUM_DENSE
                hexes[f - 1 - NUM_DENSE] = v
                hmiss[f - 1 - NUM_DENSE] = e == s
        f += 1
        more = i < n and buf[i] != 10
        i += 1  # past the tab (or the line end)
    if f != NUM_FIELDS:
        code = BAD_FIELD_COUNT
        arg = f
    return i, code, arg, label


@njit(inline="always", **_ROW_CODE)
def _line_common(buf, i, n, ints, imiss, hexes, hmiss):  # pragma: no cover - compiled
    """The common well-formed line from byte ``i`` in one read of each byte: (next line's
    start, label), or (-1, 0) for any line it does not take (``_line_general`` decides it).
    Every line taken here is one ``_line_general`` accepts with the same values.

    ``buf[n]`` is a 0 byte (see ``padded``): a field's scan stops there without a bounds test
    per byte (0 is neither a digit nor a separator, so a 0 byte in the data goes the general way).
    """
    if (buf[i] != 48 and buf[i] != 49) or buf[i + 1] != 9:
        return -1, 0
    label = buf[i] - 48
    i += 2
    for f in range(NUM_DENSE):
        s = i
        neg = buf[i] == 45
        if neg:
            i += 1
        p = i
        v = 0
        while True:
            d = np.int64(buf[i]) - 48
            if d < 0 or d > 9:
                break
            v = v * 10 + d
            i += 1
        if buf[i] != 9 or i - p >= 19 or (neg and i == p):
            return -1, 0
        ints[f] = -v if neg else v
        imiss[f] = i == s
        i += 1
    for k in range(NUM_SPARSE):
        c = buf[i]
        if c != 9 and c != 10 and c != 0:
            if i + 8 > n:
                return -1, 0
            # four independent look-ups (no chain through a value); -1 (not hex digits) sets the sign bit
            p0 = np.int64(_HEX_PAIR[np.int64(buf[i]) | (np.int64(buf[i + 1]) << 8)])
            p1 = np.int64(_HEX_PAIR[np.int64(buf[i + 2]) | (np.int64(buf[i + 3]) << 8)])
            p2 = np.int64(_HEX_PAIR[np.int64(buf[i + 4]) | (np.int64(buf[i + 5]) << 8)])
            p3 = np.int64(_HEX_PAIR[np.int64(buf[i + 6]) | (np.int64(buf[i + 7]) << 8)])
            if (p0 | p1 | p2 | p3) < 0:
                return -1, 0
            hexes[k] = (p0 << 24) | (p1 << 16) | (p2 << 8) | p3
            hmiss[k] = False
            i += 8
        else:
            hexes[k] = 0
            hmiss[k] = True
        if k < NUM_SPARSE - 1:
            if buf[i] != 9:
                return -1, 0
        elif i < n and buf[i] != 10:  # the last field ends the line (LF, or the end of the bytes)
            return -1, 0
        i += 1
    return i, label


@njit(inline="always", **_ROW_CODE)
def _line(buf, i, n, ints, imiss, hexes, hmiss):  # pragma: no cover - compiled
    """One line from byte ``i``: (next line's start, reason code or 0, its argument, label)."""
    j, label = _line_common(buf, i, n, ints, imiss, hexes, hmiss)
    if j >= 0:
        return j, 0, 0, label
    return _line_general(buf, i, n, ints, imiss, hexes, hmiss)


@njit(**_ROW_CODE)
def _record_bad(bad_line, bad_code, bad_arg, nbad, line, code, arg):  # pragma: no cover
    """Record bad line ``line`` (its reason ``code``/``arg``) while there is room; the new count."""
    if nbad < len(bad_line):
        bad_line[nbad] = line
        bad_code[nbad] = code
        bad_arg[nbad] = arg
    return nbad + 1


@njit(**_ROW_CODE)
def scan_jit(buf, dense, dmiss, sparse, smiss, labels, rows, bad_line, bad_code, bad_arg, ints, imiss, hexes,
          hmiss):  # pragma: no cover
    """One pass over whole lines (``buf`` padded), the values as read; returns (lines, valid rows, bad lines).
    ``ints``, ``imiss``, ``hexes``, ``hmiss``: one line's fields (``_scratch``)."""
    n = len(buf) - 1
    i = np.int64(0)
    line = out = nbad = 0
    while i < n:
        i, code, arg, label = _line(buf, i, n, ints, imiss, hexes, hmiss)
        if code == 0:
            labels[out] = label
            for f in range(NUM_DENSE):
                dense[f, out] = ints[f]
                dmiss[f, out] = imiss[f]
            for k in range(NUM_SPARSE):
                sparse[k, out] = hexes[k]
                smiss[k, out] = hmiss[k]
            rows[out] = line
            out += 1
        else:
            nbad = _record_bad(bad_line, bad_code, bad_arg, nbad, line, code, arg)
        line += 1
    return line, out, nbad


@njit(**_ROW_CODE)
def scan_fused_jit(buf, dense_field, dense_first, table_of, tables, fills, id_field, id_modulo, id_inverse, ids32,
                ids64, labels, dense, rows, over_row, over_field, over_value, bad_line, bad_code, bad_arg, ints, imiss,
                hexes, hmiss):  # pragma: no cover
    """One pass over whole lines (``buf`` padded), each valid row encoded by the plan as it is
    read; returns (lines, valid rows, bad lines, counts left to the caller).

    Dense feature j reads count field ``dense_field[j]``: a missing count is ``fills[j]``, one in
    [0, TABLE_SIZE) ``tables[table_of[j], count]``; any other is recorded once per (row, field)
    (by the field's first feature, ``dense_first``) and its slot left for the caller. Id feature
    k reads category field ``id_field[k]``: ``value % id_modulo[k]`` (missing: 0) into row k of
    ``ids32`` (its first len(ids32) features) or of ``ids64`` (the rest). ``ints`` .. ``hmiss``: one
    line's fields (``_scratch``).
    """
    n = len(buf) - 1
    n32 = ids32.shape[0]
    i = np.int64(0)
    line = out = nbad = nover = 0
    while i < n:
        i, code, arg, label = _line(buf, i, n, ints, imiss, hexes, hmiss)
        if code == 0:
            labels[out] = label
            for j in range(len(dense_field)):
                f = dense_field[j]
                v = ints[f]
                if imiss[f]:
                    dense[out, j] = fills[j]
                elif 0 <= v < TABLE_SIZE:
                    dense[out, j] = tables[table_of[j], v]
                elif dense_first[j]:
                    over_row[nover] = out
                    over_field[nover] = f
                    over_value[nover] = v
                    nover += 1
            for k in range(len(id_field)):
                # value % modulo by a multiply: exact for values below 2**53 (a category is below
                # 2**32), the quotient's rounding corrected by one step (a division costs ~3x this)
                x = hexes[id_field[k]]
                m = id_modulo[k]
                v = x - np.int64(x * id_inverse[k]) * m
                if v < 0:
                    v += m
                elif v >= m:
                    v -= m
                if k < n32:
                    ids32[k, out] = v
                else:
                    ids64[k - n32, out] = v
            rows[out] = line
            out += 1
        else:
            nbad = _record_bad(bad_line, bad_code, bad_arg, nbad, line, code, arg)
        line += 1
    return line, out, nbad, nover


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


def fused_chunk(data: bytes | np.ndarray, plan: FusedPlan, out: FusedOutput) -> FusedChunk:
    """Parses whole lines of raw Criteo TSV (bytes, or ``padded``'s array of them), encoding each
    valid row by ``plan`` into ``out``."""
    buf = _padded(data)
    over = len(buf) // MIN_LINE_BYTES * NUM_DENSE + NUM_DENSE  # at most one per count field of a row
    over_row, over_field, over_value = np.empty(over, np.int64), np.empty(over, np.int64), np.empty(over, np.int64)
    bad = _bad_buffers()
    lines, rows, nbad, nover = _run("scan_fused", buf, plan.dense_field, plan.dense_first, plan.table_of, plan.tables,
                                           plan.fills, plan.id_field, plan.id_modulo, plan.id_inverse, out.ids32, out.ids64,
                                           out.labels, out.dense, out.rows, over_row, over_field, over_value, *bad,
                                           *_scratch())
    return FusedChunk(int(rows), int(lines), _bad_list(*bad, nbad), int(nbad), over_row[:nover], over_field[:nover],
                      over_value[:nover])


@njit(cache=True, nogil=True)
def count_newlines_jit(buf) -> int:  # pragma: no cover - compiled
    """LF bytes in ``buf`` (vectorised by LLVM: several GB/s)."""
    total = 0
    for b in buf:
        total += b == 10
    return total


def count_newlines(buf: np.ndarray) -> int:
    """LF bytes in ``buf`` (a uint8 array)."""
    return _run("count_newlines", buf)


# -- the same kernels compiled ahead of time (build_kernels.py) -------------------------------------
COMPILED_PREFIX = "_tsv_compiled_"
_SOURCES = ("tsv_kernel.py", "build_kernels.py")
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


def compiled_name(sources: Optional[Path] = None) -> str:
    """The module name of a build of these kernels: a digest of what makes it (this file and the
    build's, as in ``sources``, by default this package; the constants compiled in; numba's and
    numpy's versions; the CPU it targets), so that no other build is ever loaded."""
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
    built: Optional[ModuleType] = None
    try:
        built = importlib.import_module(f"{__package__}.{compiled_name()}")
    except (ImportError, OSError):  # never built, or built from other sources (compiled_name differs), or
        pass  # no sources to hash (an install without them): the JIT's
    return built if built is not None else _Jit


def _run(kernel: str, *args: np.ndarray):
    """``kernel`` of the build (its arguments checked first: TypeError naming the one that is not
    as the build takes it) or of the JIT."""
    if COMPILED:
        for i, (a, (code, ndim)) in enumerate(zip(args, ARGS[kernel])):
            if not (isinstance(a, np.ndarray) and a.dtype == np.dtype(code) and a.ndim == ndim
                    and a.flags.c_contiguous):
                got = f"{a.dtype} {a.ndim}-d, contiguous: {a.flags.c_contiguous}" if isinstance(a, np.ndarray) else type(a)
                raise TypeError(f"{kernel}: argument {i} must be a C-contiguous {ndim}-d {np.dtype(code)} array, "
                                f"got {got}")
    return getattr(_KERNELS, kernel)(*args)


_KERNELS = _kernels()
COMPILED = _KERNELS is not _Jit
