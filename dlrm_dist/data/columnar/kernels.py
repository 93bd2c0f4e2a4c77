"""The staging path's compiled kernels (their numba code in text_rows.py, run by compiled.py: a
build made ahead of time, or numba's JIT): FNV-1a 64 of Arrow strings (the hash of every
``kind = "hash"`` id and OOV bucket), the byte order of texts by integer sorts, and the distinct
texts of a vocabulary table with dense ids (``Interner``).

The hash is over the value's UTF-8 bytes, offset basis 0xcbf29ce484222325, prime 0x100000001b3
(the same on every run and machine); a null hashes as the empty string. One loop over the
bytes: the numpy formulation (one vectorised step per character position, over the values at
least that long) costs about 50 ns per byte, this about 1. The kernel releases the GIL.
"""

from __future__ import annotations

import contextlib
import mmap
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrm_dist.data.columnar import compiled

FNV_OFFSET, FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets of the array's values, its data bytes) without a copy of the data."""
    wide = pa.types.is_large_string(arr.type)
    offsets = np.frombuffer(arr.buffers()[1], np.int64 if wide else np.int32)[arr.offset: arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None and data.size else np.zeros(1, np.uint8)
    return offsets.astype(np.int64, copy=False), data


def _flat(strings: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks() if strings.num_chunks != 1 else strings.chunk(0)
    if not (pa.types.is_string(strings.type) or pa.types.is_large_string(strings.type)):
        strings = pc.cast(strings, pa.string())
    return strings


def fnv1a(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """FNV-1a 64 (uint64) of each string's UTF-8 bytes (null -> hash of the empty string)."""
    arr = _flat(strings)
    out = np.empty(len(arr), np.uint64)
    if not len(arr):
        return out
    compiled.run("fnv1a", *buffers(arr), out)
    if arr.null_count:  # a null's offsets may span bytes (Arrow leaves them unspecified): empty text
        out[arr.is_null().to_numpy(zero_copy_only=False)] = FNV_OFFSET
    return out


# -- ordering texts --------------------------------------------------------------------------------
def text_order(texts: pa.Array, first: Optional[np.ndarray] = None) -> np.ndarray:
    """The permutation that sorts ``texts`` (no nulls) by ``first`` (an int64 key, ascending) and
    then by their UTF-8 bytes, as Arrow's and Python's sorts order them (a prefix first). Equal
    texts (a vocabulary has none) come in an unspecified, but deterministic, order.

    Integer sorts, 8 bytes at a time: the first orders everything by (first, bytes 0..7); each
    further round re-sorts only the runs still tied by their next 8 bytes (zero padded) and, past
    their longest text, by length. Texts that differ early cost one integer sort of all rows, where
    a comparison sort of strings costs several times more.
    """
    arr = _flat(texts)
    n = len(arr)
    if first is not None and n and (first == first[0]).all():  # (all counts 1, say): one integer sort, not two
        first = None
    offsets, data = buffers(arr)
    lengths = np.diff(offsets)
    key = np.empty(n, np.uint64)
    compiled.run("byte_key", offsets, data, np.arange(n), 0, key)
    # (round one need not be stable: every later round re-sorts what it left tied, until only equal
    # texts are: quicksort is 3x faster than a stable sort of 2M keys)
    order = np.lexsort((key, first)) if first is not None else np.argsort(key)
    change = np.ones(n, bool)
    change[1:] = key[order][1:] != key[order][:-1]
    if first is not None:
        change[1:] |= first[order][1:] != first[order][:-1]
    start = 0
    while n > 1:
        run = np.cumsum(change)  # run id of every position: tied positions share one
        tied = ~change
        tied[:-1] |= ~change[1:]
        at = np.flatnonzero(tied)
        if not at.size:
            break
        rows = order[at]
        start += 8
        by_length = start >= int(lengths[rows].max())
        nxt = lengths[rows].astype(np.uint64) if by_length else np.empty(len(rows), np.uint64)
        if not by_length:
            compiled.run("byte_key", offsets, data, rows, start, nxt)
        sub = np.lexsort((nxt, run[at]))
        order[at] = rows[sub]
        nxt = nxt[sub]
        change[at[1:]] |= nxt[1:] != nxt[:-1]
        if by_length:  # what is still tied is the same text
            break
    return order


# -- distinct texts, each with a dense id -------------------------------------------------------------
ID_BITS = np.uint64(40)  # a slot's meta word: id + 1 in the low 40 bits, the text's length (capped) above
ID_MASK = np.uint64((1 << 40) - 1)
LONG = 0xFFFFFF  # length field of a text too long for it: its length is compared from the text store
INLINE = 16  # texts up to this many bytes are confirmed from their slot alone (one cache line per probe)
_HUGE_FROM = 4 << 20  # slot tables from this size on ask for huge pages
AHEAD = 4096  # texts hashed, and their slots loaded, ahead of their probes (a few hundred kB of slots: in L2)


def _table(slots: int) -> np.ndarray:
    """An empty slot table; one of several MB on transparent huge pages where the kernel offers them
    (a lookup in a table of 2M values is a cache miss, and with 4 kB pages a TLB miss too)."""
    nbytes = slots * 32
    if nbytes < _HUGE_FROM or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.zeros((slots, 4), np.uint64)
    area = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # (zeroed by the kernel)
    with contextlib.suppress(OSError):
        area.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(area, np.uint64).reshape(slots, 4)  # (the array keeps the mapping alive)


def _grown(arr: np.ndarray, need: int) -> np.ndarray:
    if need <= len(arr):
        return arr
    out = np.empty(max(need, 2 * len(arr)), arr.dtype)
    out[: len(arr)] = arr
    return out


class Interner:
    """The distinct texts of one vocabulary table, each with a dense id (0, 1, ... in order of first
    sight), looked up by FNV-1a 64 in an open-addressing table and confirmed byte for byte: two
    texts with one hash are reported (``Collision``), never merged. Memory: the distinct texts'
    bytes, their hashes and the table (at most half full)."""

    HASH_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)  # (tests narrow it to make collisions)

    def __init__(self) -> None:
        self.n, self.used = 0, 0
        self.slots = np.zeros((1 << 10, 4), np.uint64)  # (hash, id + 1 | length << 40, bytes 0..15); 0: empty
        self.keys = np.zeros(1 << 9, np.uint64)
        self.starts = np.zeros((1 << 9) + 1, np.int64)
        self.buf = np.zeros(1 << 16, np.uint8)

    def ids(self, texts: pa.Array) -> np.ndarray:
        """Each text's id (-1 for a null), new texts interned; raises Collision."""
        arr = _flat(texts)
        out = np.empty(len(arr), np.int64)
        if not len(arr):
            return out
        offsets, data = buffers(arr)
        missing = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(len(arr), bool)
        self._reserve(len(arr), int(offsets[-1] - offsets[0]))
        words = np.empty((min(len(out), AHEAD), 3), np.uint64)  # (the kernel's scratch: hashes and first words)
        n, used, i, j = compiled.run("intern", offsets, data, missing, self.HASH_MASK, self.slots, self.keys, self.starts,
                                     self.buf, self.n, self.used, out, words)
        self.n, self.used = n, used
        if i >= 0:
            raise Collision(self.text(j), bytes(data[offsets[i]: offsets[i + 1]]).decode("utf-8", "replace"),
                            int(self.keys[j]))
        return out

    def _reserve(self, rows: int, nbytes: int) -> None:
        self.keys = _grown(self.keys, self.n + rows)
        self.starts = _grown(self.starts, self.n + rows + 1)
        self.buf = _grown(self.buf, self.used + nbytes)
        if 2 * (self.n + rows) > len(self.slots):  # rebuilt larger: at most half full
            slots = _table(1 << int(2 * (self.n + rows) - 1).bit_length())
            compiled.run("reslot", self.slots, slots)
            self.slots = slots

    def text(self, i: int) -> str:
        return bytes(self.buf[self.starts[i]: self.starts[i + 1]]).decode("utf-8", "replace")

    def texts(self) -> pa.Array:
        """Every interned text, by id."""
        offsets = pa.py_buffer(np.ascontiguousarray(self.starts[: self.n + 1]))
        return pa.LargeStringArray.from_buffers(self.n, offsets, pa.py_buffer(self.buf[: self.used].copy()))

    def hashes(self) -> np.ndarray:
        """Every interned text's FNV-1a 64, by id."""
        return self.keys[: self.n]


class Collision(Exception):
    """Two texts with one FNV-1a 64 hash."""

    def __init__(self, first: str, second: str, h: int) -> None:
        super().__init__(first, second, h)
        self.first, self.second, self.hash = first, second, h


def count_ids(ids: np.ndarray, train: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> None:
    """``counts[id] += 1`` for every id >= 0 of a training row (``train``); ``lengths`` are the
    rows' bag lengths (empty: one id per row)."""
    compiled.run("count_ids", ids, train, lengths, counts)


def model_ids(staged: np.ndarray, vocab_ids: np.ndarray, hashes: np.ndarray, empty: np.uint64, oov_buckets: np.uint64,
              out: np.ndarray) -> None:
    """Each staged distinct id's model id into ``out``: ``vocab_ids[id]`` when >= 0, else the OOV
    bucket ``hash % oov_buckets`` of its text (``empty``'s for a missing value, id -1)."""
    compiled.run("model_ids", staged, vocab_ids, hashes, empty, oov_buckets, out)


# -- multi-hot bags ---------------------------------------------------------------------------------
def split_bags(texts: pa.Array, delimiter: str) -> Optional[tuple[pa.Array, np.ndarray]]:
    """A multi-hot column's values and per-row counts as encode.bags_of gives them (each text
    split at ``delimiter``, empty pieces dropped, a missing text no value), in one pass over the
    bytes where pyarrow's split, flatten and filter take several; None unless the delimiter is
    one ASCII byte (which never occurs inside a UTF-8 sequence: splitting the bytes there splits
    the text)."""
    if len(delimiter) != 1 or ord(delimiter) >= 128:
        return None
    arr = _flat(texts)
    offsets, data = buffers(arr)
    rows = len(arr)
    missing = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(rows, bool)
    nbytes = int(offsets[-1] - offsets[0]) if rows else 0
    out_offsets, out, counts = np.empty(nbytes // 2 + rows + 2, np.int64), np.empty(max(nbytes, 1), np.uint8), \
        np.empty(rows, np.int64)
    k = compiled.run("split", offsets, data, missing, ord(delimiter), out_offsets, out, counts)
    values = pa.LargeStringArray.from_buffers(k, pa.py_buffer(out_offsets[: k + 1]),
                                              pa.py_buffer(out[: int(out_offsets[k])]))
    return values, counts
