"""Independent references the data tests compare the package's outputs with (pure Python)."""

from __future__ import annotations


def fnv1a(text: str) -> int:
    """64-bit FNV-1a of the UTF-8 bytes, written out from the definition."""
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


def criteo(lines: list[str], days: int, buckets: int | None = None, vocab_min_count: int | None = None) -> dict:
    """What preprocessing Criteo lines must give, from the definitions, line by line.

    Days: lines [total * d // days, total * (d + 1) // days) (malformed lines counted); train =
    every day but the last, val = the last day's first ceil(n / 2) valid rows, test = the rest.
    Dense: log(1 + max(x, 0)) of each count (empty = 0) in float64, stored as float32. Ids:
    int(token, 16) % buckets (empty = 0); or, with ``vocab_min_count``, 1 + the position among
    the values seen at least that often in training, ascending, and 0 for the others and for
    empty tokens. Returns split -> (dense rows, id rows, labels) as plain lists.
    """
    import math
    import struct

    def f32(x: float) -> float:
        return struct.unpack("f", struct.pack("f", x))[0]

    total = len(lines)
    day_rows: list[list[list[str]]] = [[] for _ in range(days)]
    for i, line in enumerate(lines):
        fields = line.rstrip("\r\n").split("\t")
        if criteo_valid(fields):
            day = next(d for d in range(days) if total * d // days <= i < total * (d + 1) // days)
            day_rows[day].append(fields)
    train = [r for d in day_rows[:-1] for r in d]
    last = day_rows[-1]
    half = math.ceil(len(last) / 2)
    vocab = None
    if vocab_min_count is not None:
        vocab = []
        for j in range(26):
            counts: dict[int, int] = {}
            for r in train:
                if r[14 + j]:
                    counts[int(r[14 + j], 16)] = counts.get(int(r[14 + j], 16), 0) + 1
            vocab.append({v: k + 1 for k, v in enumerate(sorted(v for v, c in counts.items() if c >= vocab_min_count))})

    def ids(r: list[str]) -> list[int]:
        if vocab is None:
            return [int(t or "0", 16) % buckets for t in r[14:]]
        return [vocab[j].get(int(t, 16), 0) if t else 0 for j, t in enumerate(r[14:])]

    def rows(rs: list[list[str]]) -> tuple:
        return ([[f32(math.log1p(max(int(x or "0"), 0))) for x in r[1:14]] for r in rs], [ids(r) for r in rs],
                [float(r[0]) for r in rs])

    return {"train": rows(train), "val": rows(last[:half]), "test": rows(last[half:])}


def criteo_valid(fields: list[str]) -> bool:
    """A Criteo line's fields as the format defines them: 40 fields, label 0 or 1, 13 counts
    (empty, or an optionally negative run of ASCII digits within int64), 26 categories (empty,
    or exactly 8 hex digits)."""
    def count(x: str) -> bool:
        digits = x[1:] if x.startswith("-") else x
        return x == "" or (digits != "" and all(c in "0123456789" for c in digits) and int(digits) < 2**63)

    def category(x: str) -> bool:
        return x == "" or (len(x) == 8 and all(c in "0123456789abcdefABCDEF" for c in x))

    return (len(fields) == 40 and fields[0] in ("0", "1") and all(count(x) for x in fields[1:14])
            and all(category(x) for x in fields[14:]))
