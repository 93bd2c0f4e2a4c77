"""The partitioner's placement order and refinement (partitioner.partition, _refine), on hand-made options.

Planner suite s1034 (1,860 tables on 64 x 24 GB): our plan was 1.28x TorchRec's. LPT by cost places the
cheap but large shards last; with memory nearly full, big one-hot tables found no host with room on all
its ranks, and the repairs split them row-wise over all 64 ranks at 44x the cost. TorchRec's greedy
partitioner places largest storage first and fitted them as chosen. Suite s1011 (143 tables, 2 ranks):
a 0.03% tie lost to TorchRec because no single move could balance the two ranks; a swap can.

The options here are synthetic (costs and bytes chosen by hand, estimates not TorchRec's) so that each
mechanism is shown alone and the expected bottleneck is known exactly.
"""

from __future__ import annotations

import numpy as np

from dlrm_dist.planning.partitioner import partition
from dlrm_dist.planning.placement import bottleneck
from dlrm_dist.planning.types import COST_WEIGHTS, Capacity, Option, PlannerInputs, TableSpec, TopologySpec

_COST_COLUMN = int(np.flatnonzero(COST_WEIGHTS)[0])


def _inputs(num_tables: int, world: int) -> PlannerInputs:
    tables = tuple(TableSpec(f"t{i}", 1_000, 16, 1.0) for i in range(num_tables))
    return PlannerInputs(tables=tables, topology=TopologySpec(world, world, hbm_gb=10.0, ddr_gb=512.0))


def _option(table: int, sharding_type: str, costs: list[float], hbm: list[float], world: int) -> Option:
    """An in-HBM option whose shard ``s`` costs ``costs[s]`` ms and holds ``hbm[s]`` bytes."""
    s = len(costs)
    perf = np.zeros((s, len(COST_WEIGHTS)))
    perf[:, _COST_COLUMN] = costs
    rows = 1_000 // s
    sizes = np.array([[rows, 16]] * s, dtype=np.int64)
    offsets = np.array([[rows * k, 0] for k in range(s)], dtype=np.int64)
    return Option(table, sharding_type, "fused", None, sizes, offsets, perf,
                  np.array(hbm, dtype=np.int64), np.zeros(s, dtype=np.int64))


def test_a_large_cheap_table_that_lpt_leaves_no_room_is_placed_largest_storage_first_not_split() -> None:
    """t0 holds 60% of a rank's HBM and costs 1 ms whole, or 2 x 10 ms split row-wise; t1..t4 hold 30% and
    cost 5 ms each. By cost (LPT) the four 5 ms tables go two per rank and leave no rank 60% free, so t0 was
    split: 10 + 5 + 5 = 20 ms. Largest storage first, t0 fits whole: 15 ms (5 + 5 + 5 beside 1 + 5)."""
    inputs = _inputs(5, 2)
    cap = Capacity.of(inputs).hbm
    options = [[_option(0, "table_wise", [1.0], [0.6 * cap], 2),
                _option(0, "row_wise", [10.0, 10.0], [0.3 * cap, 0.3 * cap], 2)]]
    options += [[_option(t, "table_wise", [5.0], [0.3 * cap], 2)] for t in range(1, 5)]
    placed = partition(options, inputs)
    assert placed[0].option.sharding_type == "table_wise"
    assert bottleneck(placed, 2) == 15.0


def test_a_swap_balances_two_ranks_no_single_move_can() -> None:
    """Costs 5, 4, 3, 3, 3 on 2 ranks: LPT gives {5, 3} = 8 and {4, 3, 3} = 10, and moving any one shard
    makes the other rank the bottleneck at 11 or 12; swapping the 4 with a 3 gives 9 and 9."""
    inputs = _inputs(5, 2)
    options = [[_option(t, "table_wise", [c], [1_000], 2)] for t, c in enumerate([5.0, 4.0, 3.0, 3.0, 3.0])]
    placed = partition(options, inputs)
    assert bottleneck(placed, 2) == 9.0
    assert sorted(np.bincount([int(tp.ranks[0]) for tp in placed], minlength=2)) == [2, 3]


def test_a_swap_respects_memory() -> None:
    """As above, but the 4 ms table is too big to join the rank holding the 5 ms one: no swap, 10 ms."""
    inputs = _inputs(5, 2)
    cap = Capacity.of(inputs).hbm
    sizes = [0.5 * cap, 0.6 * cap, 0.1 * cap, 0.1 * cap, 0.1 * cap]
    options = [[_option(t, "table_wise", [c], [h], 2)] for t, (c, h) in enumerate(zip([5.0, 4.0, 3.0, 3.0, 3.0], sizes))]
    placed = partition(options, inputs)
    load, hbm = np.zeros(2), np.zeros(2)
    for tp in placed:
        load[tp.ranks[0]] += tp.option.max_cost
        hbm[tp.ranks[0]] += tp.option.hbm[0]
    assert (hbm <= cap + 1e-6).all()
    assert bottleneck(placed, 2) == 10.0
