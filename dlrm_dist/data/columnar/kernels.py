"""Compiled kernels (numba) of the staging path: FNV-1a 64 of Arrow strings (the hash every
``kind = "hash"`` id and every staged vocabulary value is made of), an O(1) index of such hashes,
and the byte order of texts by integer sorts.

The hash is over the value's UTF-8 bytes, offset basis 0xcbf29ce484222325, prime 0x100000001b3
(the same on every run and machine); a null hashes as the empty string. One loop over the
bytes: the numpy formulation (one vectorised step per character position, over the values at
least that long) costs about 50 ns per byte, this about 1. The kernel releases the GIL.
"""

from __future__ import annotations

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


# -- positions of hashes in a set of them ----------------------------------------------------------
@njit(cache=True, nogil=True)
def _build(keys, slots, positions):  # pragma: no cover - compiled
    mask = np.uint64(len(slots) - 1)
    for i in range(len(keys)):
        s = keys[i] & mask
        while slots[s] != 0:
            s = (s + np.uint64(1)) & mask
        slots[s] = keys[i]
        positions[s] = i


@njit(cache=True, nogil=True)
def _find(slots, positions, queries, out):  # pragma: no cover - compiled
    mask = np.uint64(len(slots) - 1)
    for i in range(len(queries)):
        q = queries[i]
        out[i] = -1
        if q == 0:
            continue
        s = q & mask
        while slots[s] != 0:
            if slots[s] == q:
                out[i] = positions[s]
                break
            s = (s + np.uint64(1)) & mask


class HashIndex:
    """Position of each of a set of distinct, non-zero 64-bit hashes, looked up in O(1): an open
    addressing table at most half full (the keys are FNV-1a hashes already: their low bits are
    the slot). ``np.searchsorted`` over millions of keys costs ~500 ns per look-up, this ~50."""

    def __init__(self, keys: np.ndarray) -> None:
        size = 1 << max(4, int(2 * len(keys) - 1).bit_length())
        self.slots = np.zeros(size, np.uint64)
        self.positions = np.zeros(size, np.int64)
        _build(np.ascontiguousarray(keys, np.uint64), self.slots, self.positions)

    def find(self, queries: np.ndarray) -> np.ndarray:
        """Each query's position among the keys (-1: not a key, or 0 = missing)."""
        out = np.empty(len(queries), np.int64)
        _find(self.slots, self.positions, np.ascontiguousarray(queries, np.uint64), out)
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


def text_order(texts: pa.Array, first: Optional[np.ndarray] = None) -> np.ndarray:
    """The permutation that sorts ``texts`` (no nulls) by ``first`` (an int64 key, ascending) and
    then by their UTF-8 bytes, as Arrow's and Python's sorts order them (a prefix first).

    Integer sorts, 8 bytes at a time: the first orders everything by (first, bytes 0..7); each
    further round re-sorts only the runs still tied by their next 8 bytes (zero padded) and, past
    their longest text, by length. Texts that differ early cost one integer sort of all rows, where
    a comparison sort of strings costs several times more.
    """
    arr = _flat(texts)
    n = len(arr)
    offsets, data = buffers(arr)
    lengths = np.diff(offsets)
    key = np.empty(n, np.uint64)
    _byte_key(offsets, data, np.arange(n), 0, key)
    order = np.lexsort((key, first)) if first is not None else np.argsort(key, kind="stable")
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
            _byte_key(offsets, data, rows, start, nxt)
        sub = np.lexsort((nxt, run[at]))
        order[at] = rows[sub]
        nxt = nxt[sub]
        change[at[1:]] |= nxt[1:] != nxt[:-1]
        if by_length:  # what is still tied is the same text
            break
    return order
