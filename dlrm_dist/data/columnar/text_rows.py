"""The compiled code of the generic path: numba functions over Arrow strings' buffers (the FNV-1a
hash, byte keys for ordering texts, the interner's table, id counts, model ids, multi-hot bags)
and over a CSV/TSV range's bytes (the tokenizer), for kernels.py and csv_kernel.py, their Python
fronts: those allocate every array written here (scratch too: nothing here allocates, so the
build runs without numba's runtime), check what the build is given (compiled.py) and say what
each kernel does and why it is compiled. Constants compiled in are theirs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from dlrm_dist.data.columnar.csv_kernel import CR, FIELDS, MANTISSA_LIMIT, NON_ASCII, NUMBER_FORM, ROWS, WORD
from dlrm_dist.data.columnar.kernels import AHEAD, FNV_OFFSET, FNV_PRIME, ID_BITS, ID_MASK, INLINE, LONG


@njit(cache=True, nogil=True)
def fnv1a_jit(offsets, data, out):  # pragma: no cover - compiled
    for i in range(len(out)):
        h = FNV_OFFSET
        for k in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[k])) * FNV_PRIME
        out[i] = h


@njit(cache=True, nogil=True)
def byte_key_jit(offsets, data, rows, start, out):  # pragma: no cover - compiled
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


@njit(cache=True, nogil=True)
def intern_jit(offsets, data, missing, hash_mask, slots, keys, starts, buf, n, used, out, words):  # pragma: no cover
    """Ids of a block's texts (-1: missing), new texts appended; returns (n, used, i, j): i >= 0 is
    a text whose hash is text j's while its bytes are not. One pass over each text's bytes gives
    its FNV-1a 64 (``& hash_mask``: all ones but in tests) and its first 16 bytes as two words. A
    slot is (hash, id + 1 | length << 40, bytes 0..7, bytes 8..15; meta 0: empty): a text of up
    to 16 bytes is confirmed byte for byte from its slot, without a second memory access; a
    longer one from the text store."""
    mask = np.uint64(len(slots) - 1)
    touched = np.uint64(0)
    for i in range(len(out)):
        if i % AHEAD == 0:  # the next AHEAD texts' hashes and first words; their slots loaded
            touched += _prepare(offsets, data, hash_mask, slots, mask, i, min(len(out), i + AHEAD), words)
        if missing[i]:
            out[i] = -1
            continue
        lo = offsets[i]
        size = offsets[i + 1] - lo
        h = words[i % AHEAD, 0]
        w0 = words[i % AHEAD, 1]
        w1 = words[i % AHEAD, 2]
        length = np.uint64(min(size, LONG))
        s = h & mask
        while True:
            meta = slots[s, 1]
            if meta == 0:
                slots[s, 0] = h
                slots[s, 1] = np.uint64(n + 1) | (length << ID_BITS)
                slots[s, 2] = w0
                slots[s, 3] = w1
                keys[n] = h
                for q in range(size):  # (a loop, not a slice copy: that needs numba's runtime)
                    buf[used + q] = data[lo + q]
                used += size
                starts[n + 1] = used
                out[i] = n
                n += 1
                break
            if slots[s, 0] == h:
                j = np.int64(meta & ID_MASK) - 1
                same = (meta >> ID_BITS) == length and slots[s, 2] == w0 and slots[s, 3] == w1
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
        h = FNV_OFFSET
        w0 = np.uint64(0)
        w1 = np.uint64(0)
        for k in range(size):
            c = np.uint64(data[lo + k])
            h = (h ^ c) * FNV_PRIME
            if k < 8:
                w0 |= c << np.uint64(8 * k)
            elif k < INLINE:
                w1 |= c << np.uint64(8 * (k - 8))
        h &= hash_mask
        r = i - lo_row
        words[r, 0] = h
        words[r, 1] = w0
        words[r, 2] = w1
    for r in range(hi_row - lo_row):  # (a loop of loads only: as many misses in flight as the core allows)
        touched += slots[words[r, 0] & mask, 1]
    return touched


@njit(cache=True, nogil=True)
def reslot_jit(old, slots):  # pragma: no cover - compiled
    """Every used slot of ``old`` moved into the larger, empty ``slots``."""
    mask = np.uint64(len(slots) - 1)
    for r in range(len(old)):
        if old[r, 1] == 0:
            continue
        s = old[r, 0] & mask
        while slots[s, 1] != 0:
            s = (s + np.uint64(1)) & mask
        for c in range(4):  # (word by word: a row copy needs numba's runtime)
            slots[s, c] = old[r, c]


@njit(cache=True, nogil=True)
def count_ids_jit(ids, train, lengths, counts):  # pragma: no cover - compiled
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
def model_ids_jit(staged, vocab_ids, hashes, empty, oov_buckets, out):  # pragma: no cover - compiled
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
def split_jit(offsets, data, missing, delim, out_offsets, out, counts):  # pragma: no cover - compiled
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
    if whole == 0 or (dot and frac == 0) or m >= MANTISSA_LIMIT or frac > 22:
        return 0.0, False
    v = np.float64(m) / pow10[frac]
    return (-v if neg else v), True


@njit(cache=True, nogil=True)
def ends_jit(data, special, ends):  # pragma: no cover - compiled
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
def tokenize_jit(data, delim, ends, cells, kinds, slots, nums, valid, starts, sizes, pow10):  # pragma: no cover - compiled
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
def gather_jit(data, starts, sizes, offsets, base, out, at):  # pragma: no cover - compiled
    """Every text column's cells (``starts``/``sizes``: a row per line, a column per text
    column) copied end to end into its region of ``out`` (from ``base[column]``), where
    ``offsets`` (a row per line and the end) says each begins. One pass over the lines in
    order, each array walked in memory order (column by column would be a pass per column over
    a range larger than the caches). A cell is copied WORD bytes at a time by a loop of fixed
    length, then its tail: 1.5x faster than a loop of the cell's length over its bytes."""
    texts = sizes.shape[1]
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
