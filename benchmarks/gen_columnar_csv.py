"""A seeded 19-column CSV for the generic preprocessing benchmark (issue 20 item 5).

Columns, in file order: ``label`` (0/1, about 25% positives), six numbers ``n0..n5`` (counts,
prices, signed values, a few empty cells), ten string categoricals ``c0..c9``, one multi-hot
column ``tags`` ("|"-joined bags of 0 to 5 tags) and a time column ``ts`` (seconds, increasing
with jitter, so ties and out-of-order rows occur as in logs).

The categoricals cover the vocabulary sizes that matter: ``c0`` never repeats (one fresh id per
row: a 2M-row file has a 2M-value vocabulary), ``c1`` is uniform over ``rows // 4`` values, and
``c2..c9`` are Zipf(1.2)-distributed over 100k down to 3 values. Every value is a hex token of a
seeded 64-bit mix of its index (16 digits for c0 and c1, 8 for the rest), so value order is
unrelated to frequency order.

    .venv/bin/python -m benchmarks.gen_columnar_csv OUT.csv [--rows 2000000] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrm_dist.data.hashing import U64, splitmix64

HEADER = ["label", *(f"n{i}" for i in range(6)), *(f"c{i}" for i in range(10)), "tags", "ts"]
ZIPF_SIZES = (100_000, 20_000, 5_000, 1_000, 200, 50, 10, 3)  # c2..c9
TAGS, MAX_TAGS = 1_000, 5
BLOCK = 250_000  # rows generated and written at a time (bounded memory for any --rows)
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def _tokens(index: np.ndarray, salt: int, digits: int = 8) -> np.ndarray:
    """``digits``-hex-digit tokens of a seeded 64-bit mix of ``index``. The mix is a bijection, so
    16 digits never repeat a token for distinct indices; 8 digits (32 bits) merge two of a
    column's values about once per 100k values, as real hashed ids do."""
    z = splitmix64(index.astype(U64) ^ splitmix64(np.array([salt], U64))[0]) >> U64(64 - 4 * digits)
    shifts = np.arange(4 * (digits - 1), -1, -4, dtype=U64)
    return _HEX[(z[:, None] >> shifts) & U64(15)].view(f"S{digits}").reshape(len(index))


def _zipf(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    return (rng.zipf(1.2, n) - 1) % size


def _numbers(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    counts = rng.poisson(3.0, n).astype(np.float64)
    price = np.round(rng.lognormal(3.0, 1.0, n), 2)
    signed = np.round(rng.normal(0.0, 10.0, n), 3)
    big = np.floor(rng.exponential(1e5, n))
    ratio = np.round(rng.random(n), 4)
    small = rng.integers(0, 50, n).astype(np.float64)
    return [counts, price, signed, big, ratio, small]


def _text(values: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    arr = pa.array(values.astype(str)) if values.dtype.kind != "S" else pc.cast(pa.array(values), pa.string())
    if missing is not None:
        arr = pc.if_else(pa.array(missing), "", arr)
    return arr


def _tags(rng: np.random.Generator, n: int) -> pa.Array:
    lengths = rng.integers(0, MAX_TAGS + 1, n)
    flat = _tokens(_zipf(rng, TAGS, int(lengths.sum())), salt=99)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), pc.cast(pa.array(flat), pa.string()))
    return pc.binary_join(lists, "|")


def block(rng: np.random.Generator, first: int, n: int, rows: int, t0: float) -> bytes:
    """Rows ``first .. first + n`` of a ``rows``-row file as CSV bytes (no header)."""
    cols = [_text((rng.random(n) < 0.25).astype(np.int64))]
    for j, x in enumerate(_numbers(rng, n)):
        text = np.where(np.mod(x, 1) == 0, x.astype(np.int64).astype(str), x.astype(str)) if j != 4 else x.astype(str)
        cols.append(_text(text, rng.random(n) < 0.02 * (j % 3)))  # n1, n2, n4, n5 have empty cells
    cols.append(_text(_tokens(np.arange(first, first + n), salt=0, digits=16)))  # c0: never repeats
    cols.append(_text(_tokens(rng.integers(0, max(rows // 4, 1), n), salt=1, digits=16), rng.random(n) < 0.01))
    for k, size in enumerate(ZIPF_SIZES):
        cols.append(_text(_tokens(_zipf(rng, size, n), salt=2 + k), rng.random(n) < 0.03))
    cols.append(_tags(rng, n))
    ts = t0 + np.arange(first, first + n) * 0.5 + rng.integers(-30, 30, n)  # mostly increasing, with ties
    cols.append(_text(ts.astype(np.int64)))
    line = pc.binary_join_element_wise(*cols, ",")
    return "\n".join(line.to_pylist()).encode() + b"\n"


def write(path: Path, rows: int, seed: int = 0) -> Path:
    """Writes the ``rows``-row file (header first); the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write((",".join(HEADER) + "\n").encode())
        for first in range(0, rows, BLOCK):
            f.write(block(rng, first, min(BLOCK, rows - first), rows, 1.7e9))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    write(a.out, a.rows, a.seed)


if __name__ == "__main__":
    main()
