"""TorchRec's shard layouts (calculate_shard_sizes_and_offsets) and placement strings, without TorchRec.

The enumeration splits every table the way TorchRec's planner does, for the sharding types we
plan, with TorchRec's arithmetic (``math.ceil(rows / ranks)`` in floating point, as it computes
it, so a table above 2**53 rows splits alike); tests/unit/test_planner_perf.py checks them
against torchrec.distributed.sharding_plan on a grid of shapes, world sizes and column-wise
shard dims.
"""

from __future__ import annotations

import math
from typing import Optional

MIN_CW_DIM = 128  # TorchRec's default column-wise shard dim (planner/constants.py)
Layout = tuple[list[list[int]], list[list[int]]]  # shard sizes [rows, cols] and offsets [row, col]


def _row_wise(rows: int, ranks: int, cols: int) -> Layout:
    """``ceil(rows / ranks)`` rows per rank, the remainder on the next, none after (10 over 4: 3,3,3,1)."""
    block = math.ceil(rows / ranks)
    last_rank = rows // block
    last_block = rows - block * last_rank
    sizes = [[block if r < last_rank else last_block if r == last_rank else 0, cols] for r in range(ranks)]
    offsets = [[0, 0]]
    for i in range(ranks - 1):
        offsets.append([sizes[i][0] + offsets[i][0], 0])
    return sizes, offsets


def _base_dim(lower_bound: int, dim: int) -> int:
    for i in range(lower_bound, dim):
        if dim % i == 0 and i % 4 == 0:
            return i
    return dim


def _column_wise(cols: int, rows: int, shard_dim: Optional[int]) -> Layout:
    """Equal column blocks of the smallest width >= ``shard_dim`` (128) dividing ``cols`` by a multiple of 4."""
    block = min(_base_dim(shard_dim, cols) if shard_dim else _base_dim(MIN_CW_DIM, cols), cols)
    if cols % block != 0:
        block = cols  # TorchRec warns and keeps the table whole
    n = cols // block
    return [[rows, block]] * n, [[0, block * r] for r in range(n)]


def shard_layout(rows: int, cols: int, world_size: int, local_world_size: int, sharding_type: str,
                 col_wise_shard_dim: Optional[int] = None) -> Layout:
    """Sizes and offsets of the shards of a ``rows`` x ``cols`` table (TorchRec's, no device memory sizes or
    buckets)."""
    if sharding_type == "data_parallel":
        return [[rows, cols]] * world_size, [[0, 0]] * world_size
    if sharding_type == "table_wise":
        return [[rows, cols]], [[0, 0]]
    if sharding_type == "row_wise":
        return _row_wise(rows, world_size, cols)
    if sharding_type == "table_row_wise":
        return _row_wise(rows, local_world_size, cols)
    if sharding_type in ("column_wise", "table_column_wise"):
        return _column_wise(cols, rows, col_wise_shard_dim)
    raise ValueError(f"no shard layout for sharding type {sharding_type!r}")


def placement(device: str, rank: int, local_size: int) -> str:
    """TorchRec's placement string of a shard on ``rank`` (sharding_plan.placement): the local device index on cuda."""
    return f"rank:{rank}/{device}:{rank % local_size}" if device == "cuda" else f"rank:{rank}/{device}"
