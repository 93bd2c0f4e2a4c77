"""A compiled tokenizer (numba) for the byte ranges of plain CSV/TSV files: the typed reads of
one range (columns.py's ``num:``/``text:`` fields) straight from its bytes, without pyarrow's parse.

byte_ranges.py cuts a file into ranges after line ends and parses each on a worker thread;
``parse`` is tried first on each range and gives the batch pyarrow's parse and columns.typed
would give, or None, and the range then goes through pyarrow as before (which counts and
names malformed lines and bad cells). It serves only the common shape of a line, so that
what it accepts it reads exactly as pyarrow does:

- lines end at ``\n`` and every line has one field per column (a line of another field
  count, an empty line, a ``\r`` anywhere: None);
- an empty cell is missing (null), the only null value (a schema with ``input.null_values``
  is not served);
- a numeric cell is ``-?D+(.D+)?`` with at most 18 digits and 22 decimals: its value is the
  mantissa (below 2**53: an exact double) divided by a power of ten (an exact double), which
  IEEE division rounds correctly, as pyarrow's parser rounds the decimal (anything else: None);
- every byte of the range is ASCII (pyarrow validates UTF-8 text: a range with a byte >= 0x80
  is left to it);
- no column is read both as a number and as text (such a schema is not served).

Quotes never reach it: byte_ranges does not cut a CSV holding a quote character (a TSV has
no quoting, and a ``"`` is an ordinary byte there, as in pyarrow's TSV read). For those files
``quotes`` gives the one check pyarrow's read lacks: a quote that opens a cell and is never
closed, where pyarrow takes the rest of the file, rows and all, as that cell's text (and counts
the quoted cells that hold line ends).

Three passes, each branch-light: ``_ends`` finds every cell's end (a store and an add per
byte, no jump per cell), ``_tokenize`` walks the cells line by line (numbers parsed, text
cells' spans noted), ``_gather`` copies each text column's cells end to end, 8 bytes at a
time, in line order. About 0.7 s per core for 340 MB here, where pyarrow's parse and string
building take 2.8 s. The kernels release the GIL. Loading them (numba's cache; its compiler
set up, ~0.3 s the first time in a process) runs on a thread of its own (``warm``) while
pyarrow parses the first ranges.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import BinaryIO, Optional

import numpy as np
import pyarrow as pa
from numba import njit

from dlrm_dist.data.columnar import columns
from dlrm_dist.features.schema import FeatureSchema

SKIP, NUMBER, TEXT = 0, 1, 2  # what the tokenizer does with a file column
_MANTISSA_LIMIT = 1 << 53  # mantissas below it are exact doubles
_POW10 = np.array([10.0 ** k for k in range(23)])  # 10**0 .. 10**22: exact doubles
# Return codes below 0: the range is not served (pyarrow reads it).
FIELDS, CR, NUMBER_FORM, NON_ASCII, ROWS = -1, -2, -3, -4, -5
WORD = 8  # bytes a text cell is copied in at a time


@njit(cache=True, nogil=True)
def _number(data, a, b, pow10):  # pragma: no cover - compiled
    """(value, ok) of the cell data[a:b] when it is ``-?D+(.D+)?`` with an exact mantissa."""
    i = a
    neg = data[i] == 45  # '-'
    if neg:
        i += 1
    m = np.int64(0)
    whole = 0
    frac = 0
    dot = False
    while i < b:
        c = data[i]
        if 48 <= c <= 57:
            if whole + frac >= 18:  # (a mantissa of 18 digits cannot overflow int64; longer: not served)
                return 0.0, False
            m = m * 10 + (c - 48)
            if dot:
                frac += 1
            else:
                whole += 1
        elif c == 46 and not dot:  # '.'
            dot = True
        else:
            return 0.0, False
        i += 1
    if whole == 0 or (dot and frac == 0) or m >= _MANTISSA_LIMIT or frac > 22:
        return 0.0, False
    v = np.float64(m) / pow10[frac]
    return (-v if neg else v), True


@njit(cache=True, nogil=True)
def _ends(data, special, ends):  # pragma: no cover - compiled
    """Where each cell ends (the offset of its delimiter, line end or ``\r``), branch-free: a
    write per byte and a count, no jump per cell. Returns the count, or a code below 0: more
    cells than ``ends`` holds, or a byte that is not ASCII anywhere in the range (pyarrow
    validates UTF-8 text: such a range is left to it)."""
    k = 0
    high = 0
    limit = len(ends) - 1
    for i in range(len(data)):
        c = data[i]
        ends[k] = i
        k += special[c]
        high |= c
        if k >= limit:
            return ROWS
    if high >= 128:
        return NON_ASCII
    if len(data) and data[len(data) - 1] != 10:  # (the last line without its line end)
        ends[k] = len(data)
        k += 1
    return k


@njit(cache=True, nogil=True)
def _tokenize(data, delim, ends, cells, kinds, slots, nums, valid, starts, sizes, pow10):  # pragma: no cover - compiled
    """Rows of ``data`` tokenized from its cells' ends: numbers into nums/valid, text cells'
    (start, size) into starts/sizes (by their column's slot); returns the row count or a code
    below 0 (a line of another field count, an empty line, a ``\r``, a number not served)."""
    ncols = len(kinds)
    if cells % ncols:
        return FIELDS
    rows = cells // ncols
    n = len(data)
    a = 0
    for row in range(rows):
        base = row * ncols
        for col in range(ncols):
            e = ends[base + col]
            c = data[e] if e < n else 10
            if c != (10 if col == ncols - 1 else delim):
                return CR if c == 13 else FIELDS
            if col == 0 and c == 10 and e == a:  # an empty line (pyarrow skips it) in a file of one column
                return FIELDS
            k = kinds[col]
            if k == 1:
                s = slots[col]
                if e == a:
                    valid[s, row] = 0
                    nums[s, row] = 0.0
                else:
                    v, ok = _number(data, a, e, pow10)
                    if not ok:
                        return NUMBER_FORM
                    nums[s, row] = v
                    valid[s, row] = 1
            elif k == 2:
                s = slots[col]
                starts[row, s] = a
                sizes[row, s] = e - a
            a = e + 1
    return rows


@njit(cache=True, nogil=True)
def _gather(data, starts, sizes, offsets, base, out):  # pragma: no cover - compiled
    """Every text column's cells (``starts``/``sizes``: a row per line, a column per text
    column) copied end to end into its region of ``out`` (from ``base[column]``), where
    ``offsets`` (a row per line and the end) says each begins. One pass over the lines in
    order, each array walked in memory order (column by column would be a pass per column over
    a range larger than the caches). A cell is copied WORD bytes at a time by a loop of fixed
    length, then its tail: 1.5x faster than a loop of the cell's length over its bytes."""
    texts = sizes.shape[1]
    at = np.zeros(texts, np.int64)
    for i in range(sizes.shape[0]):
        for s in range(texts):
            a = starts[i, s]
            o = at[s]
            offsets[i, s] = o
            size = sizes[i, s]
            b = base[s] + o
            q = 0
            while q + WORD <= size:
                for r in range(WORD):
                    out[b + q + r] = data[a + q + r]
                q += WORD
            while q < size:
                out[b + q] = data[a + q]
                q += 1
            at[s] = o + size
    for s in range(texts):
        offsets[sizes.shape[0], s] = at[s]


@dataclass(frozen=True)
class Plan:
    """What the tokenizer does with each of a file's columns, and the typed fields it gives."""

    delimiter: int
    kinds: np.ndarray  # int8 per file column: SKIP, NUMBER or TEXT
    slots: np.ndarray  # int64 per file column: its index among the numbers or the texts
    numbers: list[str]  # the numeric columns, by slot
    texts: list[str]  # the text columns, by slot


_AT_START, _UNQUOTED, _QUOTED, _QUOTE_IN_QUOTED = 0, 1, 2, 3  # _quote_scan's states, at a byte


@njit(cache=True, nogil=True)
def _quote_scan(data, delim, base, state):  # pragma: no cover - compiled
    """pyarrow's quoting over ``data`` (bytes ``base ..`` of a file), from and into ``state`` = [the
    state before the next byte, the offset of the quote that opened the current quoted cell, whether
    that cell holds a line end, how many closed cells held one, the first such cell's quote]: a quote
    opens a quoted cell only where a cell starts; in one, two quotes are a quote and one closes it."""
    at, opened, spans, spanned, first = state[0], state[1], state[2], state[3], state[4]
    for i in range(len(data)):
        c = data[i]
        if at == _QUOTED:
            if c == 34:
                at = _QUOTE_IN_QUOTED
            elif c == 10 or c == 13:
                spans = 1
            continue
        if at == _QUOTE_IN_QUOTED:
            if c == 34:
                at = _QUOTED  # ("" inside quotes: one quote)
                continue
            if spans:  # (the cell closed: it held a line end)
                spanned += 1
                first = opened if first < 0 else first
                spans = 0
        if c == delim or c == 10 or c == 13:
            at = _AT_START
        elif at == _AT_START and c == 34:
            at, opened = _QUOTED, base + i
        else:
            at = _UNQUOTED
    state[0], state[1], state[2], state[3], state[4] = at, opened, spans, spanned, first


@dataclass(frozen=True)
class Quotes:
    """What ``quotes`` found: a quote never closed (its byte offset in the text, or None), and how many
    quoted cells hold a line end, with the first one's quote (a quote left open by mistake and closed
    by the next quoted cell swallows the lines between: they read as one such cell)."""

    unclosed: Optional[int]
    multiline: int
    first_multiline: Optional[int]


def quotes(stream: BinaryIO, delimiter: str, chunk: int = 8 << 20) -> Quotes:
    """The quoting of ``stream``'s text as pyarrow reads it (one pass, in chunks: bounded memory)."""
    state, base = np.array([_AT_START, -1, 0, 0, -1], np.int64), 0
    if (data := stream.read(chunk)).startswith(b"\xef\xbb\xbf"):  # (a BOM: pyarrow's text starts after it)
        data, base = data[3:] or stream.read(chunk), 3
    while data:
        _quote_scan(np.frombuffer(data, np.uint8), ord(delimiter), base, state)
        base += len(data)
        data = stream.read(chunk)
    if state[0] == _QUOTE_IN_QUOTED and state[2]:  # (the last cell, closed at the end of the text)
        state[3], state[4] = state[3] + 1, state[1] if state[4] < 0 else state[4]
    return Quotes(int(state[1]) if state[0] == _QUOTED else None, int(state[3]),
                  int(state[4]) if state[4] >= 0 else None)


def plan(schema: FeatureSchema, names: list[str], delimiter: str) -> Optional[Plan]:
    """The tokenizer's plan for a file with columns ``names``, or None when it cannot serve the
    schema (null values besides the empty cell, a column read as a number and as text, a
    delimiter that is not one ASCII byte, a repeated column name)."""
    numbers, texts = columns.numeric_columns(schema), columns.text_columns(schema)
    if (schema.input.null_values or set(numbers) & set(texts) or len(delimiter) != 1 or ord(delimiter) >= 128
            or delimiter == "\n" or len(set(names)) != len(names)):
        return None
    kinds, slots = np.zeros(len(names), np.int8), np.zeros(len(names), np.int64)
    for kind, wanted in ((NUMBER, numbers), (TEXT, texts)):
        for slot, column in enumerate(wanted):
            kinds[names.index(column)], slots[names.index(column)] = kind, slot
    return Plan(ord(delimiter), kinds, slots, numbers, texts)


def _validity(valid: np.ndarray) -> Optional[pa.Buffer]:
    """An Arrow validity bitmap of a bool/0-1 array, or None when every value is present."""
    return None if valid.all() else pa.py_buffer(np.packbits(valid.astype(bool), bitorder="little"))


def _text_arrays(data: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> list[pa.Array]:
    """The text columns (columns of ``starts``/``sizes``, a row per line) as Arrow strings, an
    empty cell null."""
    rows, texts = sizes.shape
    totals = sizes.sum(axis=0, dtype=np.int64)
    base = np.zeros(texts + 1, np.int64)  # (each column's region of ``out``)
    np.cumsum(totals, out=base[1:])
    offsets = np.empty((rows + 1, texts), np.int32)
    out = np.empty(int(base[-1]), np.uint8)
    _gather(data, starts, sizes, offsets, base, out)
    offsets = np.ascontiguousarray(offsets.T)
    present = np.ascontiguousarray((sizes > 0).T)
    return [pa.StringArray.from_buffers(rows, pa.py_buffer(offsets[s]), pa.py_buffer(out[base[s]: base[s] + totals[s]]),
                                        _validity(present[s])) for s in range(texts)]


def parse(p: Plan, raw: bytes) -> Optional[pa.RecordBatch]:
    """The typed reads (columns.uses order, columns.field_name names) of one byte range of data
    lines, or None when a line or cell is not of the shape this tokenizer serves (or there is
    no line)."""
    if len(raw) >= 1 << 31:  # (offsets within a range are int32)
        return None
    data = np.frombuffer(raw, np.uint8)
    ncols = len(p.kinds)
    special = _special(p.delimiter)
    ends = np.empty(len(raw) // 4 + 2, np.int32)  # (a cell of 4 bytes on average at least: else counted below)
    cells = _ends(data, special, ends)
    if cells == ROWS:
        ends = np.empty(int(special[data].sum()) + 2, np.int32)
        cells = _ends(data, special, ends)
    if cells < 0:
        return None
    cap = cells // ncols + 1
    nums = np.empty((len(p.numbers), cap), np.float64)
    valid = np.empty((len(p.numbers), cap), np.uint8)
    starts = np.empty((cap, len(p.texts)), np.int64)
    sizes = np.empty((cap, len(p.texts)), np.int32)
    rows = _tokenize(data, p.delimiter, ends, cells, p.kinds, p.slots, nums, valid, starts, sizes, _POW10)
    if rows <= 0:  # (no rows: pyarrow says what such a range is)
        return None
    texts = _text_arrays(data, starts[:rows], sizes[:rows])
    arrays = [pa.Array.from_buffers(pa.float64(), rows, [_validity(valid[s, :rows]), pa.py_buffer(nums[s, :rows].copy())])
              for s in range(len(p.numbers))]
    names = [columns.field_name(columns.NUM, c) for c in p.numbers] + [columns.field_name(columns.TEXT, c) for c in p.texts]
    return pa.RecordBatch.from_arrays(arrays + texts, names=names)


def _special(delimiter: int) -> np.ndarray:
    """The bytes that end a cell: the delimiter, ``\n`` and ``\r`` (which stops the tokenizer)."""
    special = np.zeros(256, np.int64)
    special[[delimiter, 10, 13]] = 1
    return special


_WARM = threading.Event()  # set once the kernels are loaded in this process
_WARM_LOCK = threading.Lock()
_warming: list[threading.Thread] = []


def warm(p: Plan) -> threading.Event:
    """Starts loading the kernels (once per process) on a thread of its own, by a parse of one
    line of ``p``'s shape (the types of every real call: nothing is compiled twice); the event
    is set when they are loaded. Until then byte_ranges has pyarrow parse the ranges."""
    with _WARM_LOCK:
        if not _warming:
            line = ",".join("0" if k == NUMBER else "a" if k == TEXT else "" for k in p.kinds.tolist())
            sample = (line.replace(",", chr(p.delimiter)) + "\n").encode()
            _warming.append(threading.Thread(target=_load, args=(p, sample), name="dlrm_dist-csv-warm", daemon=True))
            _warming[0].start()
    return _WARM


def _load(p: Plan, sample: bytes) -> None:
    try:
        parse(p, sample)
    finally:
        _WARM.set()
