"""The compiled code of the criteo_tsv parser: numba functions over a chunk's bytes, one line at a time.

What they do and why they are compiled: tsv_kernel.py, their Python front (it allocates every array
they write, checks what they are given and calls them, JIT-compiled or as build_kernels.py built
them ahead of time). Nothing here allocates or checks: the callers pass the output and scratch arrays.
"""

from __future__ import annotations

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



@njit(cache=True, nogil=True)
def count_newlines_jit(buf) -> int:  # pragma: no cover - compiled
    """LF bytes in ``buf`` (vectorised by LLVM: several GB/s)."""
    total = 0
    for b in buf:
        total += b == 10
    return total
