"""A placement: which option each table uses and which rank holds each shard.

Also the per-rank arithmetic every stage shares: loads (estimated ms), HBM and DDR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlrm_dist.planning.inputs import Capacity, PlannerInputs  # noqa: F401 - Capacity is part of this API
from dlrm_dist.planning.options import Option


@dataclass
class TablePlacement:
    option: Option
    ranks: np.ndarray  # (S,) rank of each shard


def rank_totals(tables: list[TablePlacement], world_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(load ms, hbm bytes, ddr bytes) per rank."""
    load, hbm, ddr = np.zeros(world_size), np.zeros(world_size), np.zeros(world_size)
    for tp in tables:
        for acc, w in ((load, tp.option.shard_cost), (hbm, tp.option.hbm), (ddr, tp.option.ddr)):
            acc += np.bincount(tp.ranks, w, minlength=world_size)
    return load, hbm, ddr


def bottleneck(tables: list[TablePlacement], world_size: int) -> float:
    """TorchRec's rating of a plan: the slowest rank's summed shard cost (ms)."""
    return float(rank_totals(tables, world_size)[0].max())
