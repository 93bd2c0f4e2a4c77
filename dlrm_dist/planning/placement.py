"""The per-rank arithmetic of a placement that every stage shares: loads (estimated ms), HBM, DDR.

A placement is a list of TablePlacement (types.py): which option each table uses and which
rank holds each shard.
"""

from __future__ import annotations

import numpy as np

from dlrm_dist.planning.types import TablePlacement

def rank_totals(tables: list[TablePlacement], world_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(load ms, hbm bytes, ddr bytes) per rank."""
    load, hbm, ddr = np.zeros(world_size), np.zeros(world_size), np.zeros(world_size)
    for tp in tables:
        for acc, w in ((load, tp.option.shard_cost), (hbm, tp.option.hbm), (ddr, tp.option.ddr)):
            acc += np.bincount(tp.ranks, w, minlength=world_size)
    return load, hbm, ddr


def rank_loads(tables: list[TablePlacement], world_size: int) -> np.ndarray:
    """Load (ms) per rank: rank_totals' first array, summed in the same order (the same floats)."""
    load = np.zeros(world_size)
    for tp in tables:
        load += np.bincount(tp.ranks, tp.option.shard_cost, minlength=world_size)
    return load


def bottleneck(tables: list[TablePlacement], world_size: int) -> float:
    """TorchRec's rating of a plan: the slowest rank's summed shard cost (ms)."""
    return float(rank_loads(tables, world_size).max())
