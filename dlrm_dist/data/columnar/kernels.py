"""Compiled kernels (numba) of the staging path: FNV-1a 64 of Arrow strings (the hash of every
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
from numba import njit

_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


@njit(cache=True, nogil=True)
def _fnv1a(offsets, data, out):  # pragma: no cover - compiled
    for i in range(len(out)):
        h = _FNV_OFFSET
        for k in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[k])) * _FNV_PRIME
        out[i] = h


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
    _fnv1a(*buffers(arr), out)
    if arr.null_count:  # a null's offsets may span bytes (Arrow leaves them unspecified): empty text
        out[arr.is_null().to_numpy(zero_copy_only=False)] = _FNV_OFFSET
    return out


# -- ordering texts --------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _byte_key(offsets, data, rows, start, out):  # pragma: no cover - compiled
    """Bytes [start, start + 8) of each row's text as a big-endian integer, zero padded."""
    for i in range(len(rows)):
        lo = offsets[rows[i]] + start
        hi = offsets[rows[i] + 1]
        k = np.uint64(0)
        for p in range(lo, lo + 8):
            k = k << np.uint64(8)
            if p < hi:
                k = k | np.uint64(data[p])
        out[i] = k


def text_order(texts: pa.Array, first: Optional[np.ndarray] = None, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """The permutation that sorts ``texts[rows]`` (no nulls; ``rows``: int64 indices, default every
    text) by ``first`` (an int64 key per row, ascending) and then by their UTF-8 bytes, as Arrow's
    and Python's sorts order them (a prefix first). Equal texts (a vocabulary has none) come in an
    unspecified, but deterministic, order. Taking the rows is left to the caller: one take of
    ``rows[order]`` gives the sorted texts, where taking the rows first would copy them twice.

    Integer sorts, 8 bytes at a time: the first orders everything by (first, bytes 0..7); each
    further round re-sorts only the runs still tied by their next 8 bytes (zero padded) and, past
    their longest text, by length. Texts that differ early cost one integer sort of all rows, where
    a comparison sort of strings costs several times more.
    """
    arr = _flat(texts)
    src = np.arange(len(arr)) if rows is None else np.asarray(rows, np.int64)
    n = len(src)
    if first is not None and n and (first == first[0]).all():  # (all counts 1, say): one integer sort, not two
        first = None
    offsets, data = buffers(arr)
    lengths = np.diff(offsets)[src]
    key = np.empty(n, np.uint64)
    _byte_key(offsets, data, src, 0, key)
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
        pos = order[at]  # the tied rows, as positions in ``src``
        start += 8
        by_length = start >= int(lengths[pos].max())
        nxt = lengths[pos].astype(np.uint64) if by_length else np.empty(len(pos), np.uint64)
        if not by_length:
            _byte_key(offsets, data, src[pos], start, nxt)
        sub = np.lexsort((nxt, run[at]))
        order[at] = pos[sub]
        nxt = nxt[sub]
        change[at[1:]] |= nxt[1:] != nxt[:-1]
        if by_length:  # what is still tied is the same text
            break
    return order


# -- distinct texts, each with a dense id -------------------------------------------------------------
_ID_BITS = np.uint64(40)  # a slot's meta word: id + 1 in the low 40 bits, the text's length (capped) above
_ID_MASK = np.uint64((1 << 40) - 1)
_LONG = 0xFFFFFF  # length field of a text too long for it: its length is compared from the text store
INLINE = 16  # texts up to this many bytes are confirmed from their slot alone (one cache line per probe)
_HUGE_FROM = 4 << 20  # slot tables from this size on ask for huge pages
FULL = -2  # _intern's j when the table is full
_AHEAD = 4096  # texts hashed, and their slots loaded, ahead of their probes (a few hundred kB of slots: in L2)


@njit(cache=True, nogil=True)
def _intern(offsets, data, missing, hash_mask, slots, keys, starts, buf, n, used, start, out):  # pragma: no cover
    """Ids of a block's texts from row ``start`` on (-1: missing), new texts appended; returns (n,
    used, i, j): i >= 0 is a text whose hash is text j's while its bytes are not, or, with j ==
    FULL, the first text not interned because the table holds as many as it may (half its slots:
    the caller grows it and goes on from there). One pass over each text's bytes gives
    its FNV-1a 64 (``& hash_mask``: all ones but in tests) and its first 16 bytes as two words. A
    slot is (hash, id + 1 | length << 40, bytes 0..7, bytes 8..15; meta 0: empty): a text of up
    to 16 bytes is confirmed byte for byte from its slot, without a second memory access; a
    longer one from the text store."""
    mask = np.uint64(len(slots) - 1)
    words = np.empty((min(len(out), _AHEAD), 3), np.uint64)
    touched = np.uint64(0)
    limit = len(slots) // 2
    for i in range(start, len(out)):
        if i % _AHEAD == 0 or i == start:  # the texts to the next multiple of _AHEAD: hashes, first words, slots
            touched += _prepare(offsets, data, hash_mask, slots, mask, i, min(len(out), (i // _AHEAD + 1) * _AHEAD),
                                words)
        if missing[i]:
            out[i] = -1
            continue
        lo = offsets[i]
        size = offsets[i + 1] - lo
        h = words[i % _AHEAD, 0]
        w0 = words[i % _AHEAD, 1]
        w1 = words[i % _AHEAD, 2]
        length = np.uint64(min(size, _LONG))
        s = h & mask
        while True:
            meta = slots[s, 1]
            if meta == 0:
                if n == limit:
                    return n, used, i, FULL
                slots[s, 0] = h
                slots[s, 1] = np.uint64(n + 1) | (length << _ID_BITS)
                slots[s, 2] = w0
                slots[s, 3] = w1
                keys[n] = h
                buf[used: used + size] = data[lo: lo + size]
                used += size
                starts[n + 1] = used
                out[i] = n
                n += 1
                break
            if slots[s, 0] == h:
                j = np.int64(meta & _ID_MASK) - 1
                same = (meta >> _ID_BITS) == length and slots[s, 2] == w0 and slots[s, 3] == w1
                if same and size > INLINE:
                    a = starts[j]
                    same = starts[j + 1] - a == size
                    k = INLINE
                    while same and k < size:
                        same = buf[a + k] == data[lo + k]
                        k += 1
                if not same:
                    return n, used, i, j
                out[i] = j
                break
            s = (s + np.uint64(1)) & mask
    if touched == np.uint64(1):  # (never in practice: keeps the loads of _prepare from being optimised away)
        out[0] = out[0]
    return n, used, -1, -1


@njit(cache=True, nogil=True, inline="always")
def _prepare(offsets, data, hash_mask, slots, mask, lo_row, hi_row, words):  # pragma: no cover - compiled
    """The FNV-1a 64 (``& hash_mask``) and the first 16 bytes (two words) of texts lo_row..hi_row
    into ``words``, and the meta word of each one's first slot loaded (summed into the return):
    the loads do not depend on one another, so the processor has many cache misses in flight
    at once, where the probe loop, one branchy text after another, waits for each in turn. A
    table of a million values is far larger than the caches; the probes then find their slots
    in cache."""
    touched = np.uint64(0)
    for i in range(lo_row, hi_row):
        lo = offsets[i]
        size = offsets[i + 1] - lo
        h = _FNV_OFFSET
        w0 = np.uint64(0)
        w1 = np.uint64(0)
        for k in range(size):
            c = np.uint64(data[lo + k])
            h = (h ^ c) * _FNV_PRIME
            if k < 8:
                w0 |= c << np.uint64(8 * k)
            elif k < INLINE:
                w1 |= c << np.uint64(8 * (k - 8))
        h &= hash_mask
        r = i % _AHEAD  # (lo_row..hi_row lie in one window of _AHEAD rows)
        words[r, 0] = h
        words[r, 1] = w0
        words[r, 2] = w1
    for i in range(lo_row, hi_row):  # (a loop of loads only: as many misses in flight as the core allows)
        touched += slots[words[i % _AHEAD, 0] & mask, 1]
    return touched


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
    MAX_IDS = (1 << 31) - 1  # ids are int32: half the staged bytes of int64, for a table of 2 billion texts

    def __init__(self) -> None:
        self.n, self.used = 0, 0
        self.slots = np.zeros((1 << 10, 4), np.uint64)  # (hash, id + 1 | length << 40, bytes 0..15); 0: empty
        self.keys = np.zeros(1 << 9, np.uint64)
        self.starts = np.zeros((1 << 9) + 1, np.int64)
        self.buf = np.zeros(1 << 16, np.uint8)

    def ids(self, texts: pa.Array) -> np.ndarray:
        """Each text's id (int32; -1 for a null), new texts interned; raises Collision, or
        OverflowError past MAX_IDS distinct texts."""
        arr = _flat(texts)
        out = np.empty(len(arr), np.int32)
        if not len(arr):
            return out
        offsets, data = buffers(arr)
        missing = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(len(arr), bool)
        self._reserve(len(arr), int(offsets[-1] - offsets[0]))
        i = 0
        while True:
            self.n, self.used, i, j = _intern(offsets, data, missing, self.HASH_MASK, self.slots, self.keys,
                                              self.starts, self.buf, self.n, self.used, i, out)
            if j != FULL:
                break
            self._resize(2 * len(self.slots))  # (at most half full: rebuilt twice as large, on from text i)
        if self.n > self.MAX_IDS:  # (their ids would not fit the int32 they are staged as)
            raise OverflowError(f"more than {self.MAX_IDS:,} distinct values in one vocabulary table")
        if i >= 0:
            raise Collision(self.text(j), bytes(data[offsets[i]: offsets[i + 1]]).decode("utf-8", "replace"),
                            int(self.keys[j]))
        return out

    def _reserve(self, rows: int, nbytes: int) -> None:
        """Room for ``rows`` new texts of ``nbytes`` in the text store (reserved, touched only as
        used); the slot table grows as it fills (every slot of it is touched: no larger than needed)."""
        self.keys = _grown(self.keys, self.n + rows)
        self.starts = _grown(self.starts, self.n + rows + 1)
        self.buf = _grown(self.buf, self.used + nbytes)

    def _resize(self, size: int) -> None:
        slots = _table(size)
        _reslot(self.slots, slots)
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


@njit(cache=True, nogil=True)
def _reslot(old, slots):  # pragma: no cover - compiled
    """Every used slot of ``old`` moved into the larger, empty ``slots``."""
    mask = np.uint64(len(slots) - 1)
    for r in range(len(old)):
        if old[r, 1] == 0:
            continue
        s = old[r, 0] & mask
        while slots[s, 1] != 0:
            s = (s + np.uint64(1)) & mask
        slots[s] = old[r]


@njit(cache=True, nogil=True)
def count_ids(ids, train, lengths, counts):  # pragma: no cover - compiled
    """``counts[id] += 1`` for every id >= 0 of a training row; ``lengths`` are the rows' bag
    lengths (empty: one id per row)."""
    if len(lengths) == 0:
        for i in range(len(ids)):
            if train[i] and ids[i] >= 0:
                counts[ids[i]] += 1
        return
    k = 0
    for r in range(len(lengths)):
        for _ in range(lengths[r]):
            if train[r] and ids[k] >= 0:
                counts[ids[k]] += 1
            k += 1


@njit(cache=True, nogil=True)
def model_ids(staged, vocab_ids, hashes, empty, oov_buckets, out):  # pragma: no cover - compiled
    """Each staged distinct id's model id: ``vocab_ids[id]`` when >= 0, else the OOV bucket
    ``hash % oov_buckets`` of its text (``empty``'s for a missing value, id -1)."""
    for i in range(len(staged)):
        v = staged[i]
        if 0 <= v < len(vocab_ids) and vocab_ids[v] >= 0:
            out[i] = vocab_ids[v]
        else:
            out[i] = np.int64((hashes[v] if v >= 0 else empty) % oov_buckets)


# -- multi-hot bags ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _split(offsets, data, missing, delim, out_offsets, out, counts):  # pragma: no cover - compiled
    """The non-empty pieces of each row's text between ``delim`` bytes, copied end to end into
    ``out`` (``out_offsets``: where each begins, and the end), and each row's count (a missing
    row: none). Returns the pieces' count."""
    o = 0
    k = 0
    out_offsets[0] = 0
    for r in range(len(counts)):
        n = 0
        if not missing[r]:
            begun = o
            for i in range(offsets[r], offsets[r + 1]):
                c = data[i]
                if c == delim:
                    if o > begun:
                        k += 1
                        out_offsets[k] = o
                        n += 1
                        begun = o
                else:
                    out[o] = c
                    o += 1
            if o > begun:
                k += 1
                out_offsets[k] = o
                n += 1
        counts[r] = n
    return k


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
    k = _split(offsets, data, missing, ord(delimiter), out_offsets, out, counts)
    values = pa.LargeStringArray.from_buffers(k, pa.py_buffer(out_offsets[: k + 1]),
                                              pa.py_buffer(out[: int(out_offsets[k])]))
    return values, counts
