"""A compiled tokenizer (its numba code in text_rows.py) for the byte ranges of plain CSV/TSV files: the typed reads of
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
no quoting, and a ``"`` is an ordinary byte there, as in pyarrow's TSV read).

Three passes, each branch-light: ``ends`` finds every cell's end (a store and an add per
byte, no jump per cell), ``tokenize`` walks the cells line by line (numbers parsed, text
cells' spans noted), ``gather`` copies each text column's cells end to end, 8 bytes at a
time, in line order. About 0.7 s per core for 340 MB here, where pyarrow's parse and string
building take 2.8 s. The kernels release the GIL. Without a build (compiled.py), loading them
from numba's cache (its compiler set up, ~0.3 s the first time in a process) runs on a
thread of its own (``warm``) while pyarrow parses the first ranges.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
from dlrm_dist.data.columnar import columns, compiled
from dlrm_dist.features.schema import FeatureSchema

SKIP, NUMBER, TEXT = 0, 1, 2  # what the tokenizer does with a file column
MANTISSA_LIMIT = 1 << 53  # mantissas below it are exact doubles
_POW10 = np.array([10.0 ** k for k in range(23)])  # 10**0 .. 10**22: exact doubles
# Return codes below 0: the range is not served (pyarrow reads it).
FIELDS, CR, NUMBER_FORM, NON_ASCII, ROWS = -1, -2, -3, -4, -5
WORD = 8  # bytes a text cell is copied in at a time


@dataclass(frozen=True)
class Plan:
    """What the tokenizer does with each of a file's columns, and the typed fields it gives."""

    delimiter: int
    kinds: np.ndarray  # int8 per file column: SKIP, NUMBER or TEXT
    slots: np.ndarray  # int64 per file column: its index among the numbers or the texts
    numbers: list[str]  # the numeric columns, by slot
    texts: list[str]  # the text columns, by slot


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
    compiled.run("gather", data, starts, sizes, offsets, base, out, np.zeros(texts, np.int64))
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
    cells = compiled.run("ends", data, special, ends)
    if cells == ROWS:
        ends = np.empty(int(special[data].sum()) + 2, np.int32)
        cells = compiled.run("ends", data, special, ends)
    if cells < 0:
        return None
    cap = cells // ncols + 1
    nums = np.empty((len(p.numbers), cap), np.float64)
    valid = np.empty((len(p.numbers), cap), np.uint8)
    starts = np.empty((cap, len(p.texts)), np.int64)
    sizes = np.empty((cap, len(p.texts)), np.int32)
    rows = compiled.run("tokenize", data, p.delimiter, ends, cells, p.kinds, p.slots, nums, valid, starts, sizes, _POW10)
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


_WARM = threading.Event()  # set once the kernels are loaded in this process (a build's: at once)
if compiled.BUILD is not None:
    _WARM.set()
_WARM_LOCK = threading.Lock()
_warming: list[threading.Thread] = []


def warm(p: Plan) -> threading.Event:
    """Starts loading the kernels (once per process) on a thread of its own, by a parse of one
    line of ``p``'s shape (the types of every real call: nothing is compiled twice); the event
    is set when they are loaded (at once with a build: nothing to load). Until then byte_ranges
    has pyarrow parse the ranges."""
    with _WARM_LOCK:
        if compiled.BUILD is None and not _warming:
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
