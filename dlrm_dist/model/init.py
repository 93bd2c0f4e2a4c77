"""Plan-independent initial embedding weights.

Row ``r`` of table ``t`` is a pure function of ``(seed, t, r)``: a counter-based Philox
stream is advanced straight to the row. Any shard (any rows, any columns) can therefore be
filled on the rank that owns it without materialising the table, and a model starts from
the same weights under every plan and world size — the basis of the equivalence tests,
of multi-node reproducibility and of resharding.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_ROW_CHUNK = 1 << 16  # rows generated at a time: bounds memory for very large tables


def _padded(dim: int) -> int:
    # Philox yields 4 words per counter step; padding rows to a multiple of 4 makes
    # "advance to row r" an exact counter jump.
    return (dim + 3) // 4 * 4


def embedding_rows(seed: int, table_index: int, num_rows: int, dim: int, start: int, stop: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of table ``table_index``: U(-1/sqrt(num_rows), 1/sqrt(num_rows)).

    The range matches TorchRec's default EmbeddingBagCollection initialisation.
    """
    if not 0 <= start <= stop <= num_rows:
        raise ValueError(f"rows [{start}, {stop}) outside a table of {num_rows} rows")
    width = _padded(dim)
    bit_gen = np.random.Philox(key=(seed << 32) | table_index)
    bit_gen.advance(start * width // 4)
    u = np.random.Generator(bit_gen).random((stop - start, width))[:, :dim]
    bound = math.sqrt(1.0 / num_rows)
    return torch.from_numpy((2.0 * u - 1.0) * bound).to(torch.float32)


def fill_rows(
    out: torch.Tensor, seed: int, table_index: int, num_rows: int, dim: int, row_offset: int, col_offset: int
) -> None:
    """Fills ``out`` (a shard: rows from ``row_offset``, columns from ``col_offset``) in chunks."""
    cols = slice(col_offset, col_offset + out.shape[1])
    for lo in range(0, out.shape[0], _ROW_CHUNK):
        hi = min(lo + _ROW_CHUNK, out.shape[0])
        rows = embedding_rows(seed, table_index, num_rows, dim, row_offset + lo, row_offset + hi)
        out[lo:hi].copy_(rows[:, cols])
