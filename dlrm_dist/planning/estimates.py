"""What a placement is expected to cost, per rank and in summary (the types are in types.py).

Per rank: the estimated fwd/bwd compute and communication time (TorchRec's perf model,
ms per iteration), HBM and DDR used against budget, input and output bytes per iteration
(TorchRec's IO-size model), and the tables/shards by sharding type. Summary: the
bottleneck rank and the tables driving it, imbalance (max/mean - 1) of cost and memory,
memory headroom, all-to-all bytes per sample, estimated iteration time and samples/s
(of the embedding part, which is what the model estimates).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from dlrm_dist.planning.perf import Perf
from dlrm_dist.planning.shard_storage import io_sizes
from dlrm_dist.planning.types import (
    PERF_FIELDS, Capacity, PlanEstimates, PlannerInputs, PlanSummary, RankEstimate, TableCost, TablePlacement,
)

def _io_bytes(tp: TablePlacement, inputs: PlannerInputs) -> tuple[np.ndarray, np.ndarray]:
    """Per shard: input (ids) and output (embeddings) bytes per iteration, TorchRec's model
    (its _calculate_shard_io_sizes for int64 ids and fp32 outputs, in closed form: shard_storage.io_sizes)."""
    t = inputs.topology
    table = inputs.tables[tp.option.table]
    ins, outs = io_sizes(tp.option.sharding_type, tp.option.sizes.tolist(), table.dim, table.pooling_factor,
                         inputs.batch_size_per_rank, t.world_size, t.ranks_per_host)
    return np.asarray(ins, dtype=np.float64), np.asarray(outs, dtype=np.float64)


def estimate(tables: list[TablePlacement], inputs: PlannerInputs) -> PlanEstimates:
    """The estimates stored in a plan file and shown by ``dlrm-plan inspect``."""
    n = inputs.topology.world_size
    cap = Capacity.of(inputs)
    perf = np.zeros((n, len(PERF_FIELDS)))
    hbm, ddr, in_b, out_b = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    shards_by_type: list[dict[str, int]] = [defaultdict(int) for _ in range(n)]
    table_cost: list[dict[str, float]] = [defaultdict(float) for _ in range(n)]
    hbm_by_type: list[dict[str, int]] = [defaultdict(int) for _ in range(n)]
    ddr_by_type: list[dict[str, int]] = [defaultdict(int) for _ in range(n)]
    a2a_bytes = 0.0
    for tp in tables:
        o, name = tp.option, inputs.tables[tp.option.table].name
        ins, outs = _io_bytes(tp, inputs)
        np.add.at(perf, tp.ranks, o.perf)
        for arr, v in ((hbm, o.hbm), (ddr, o.ddr), (in_b, ins), (out_b, outs)):
            np.add.at(arr, tp.ranks, v)
        for r, c, h, d in zip(tp.ranks, o.shard_cost, o.hbm, o.ddr):
            shards_by_type[r][o.sharding_type] += 1
            table_cost[r][name] += float(c)
            hbm_by_type[r][o.sharding_type] += int(h)
            ddr_by_type[r][o.sharding_type] += int(d)
        if o.sharding_type != "data_parallel":
            a2a_bytes += float(ins.sum() + outs.sum())
    per_rank = tuple(
        RankEstimate(
            rank=r, perf=Perf(*map(float, perf[r])), hbm_bytes=int(hbm[r]), ddr_bytes=int(ddr[r]),
            input_bytes=int(in_b[r]), output_bytes=int(out_b[r]), num_tables=len(table_cost[r]),
            shards_by_type=dict(sorted(shards_by_type[r].items())),
            hbm_by_type=dict(sorted(hbm_by_type[r].items())), ddr_by_type=dict(sorted(ddr_by_type[r].items())),
        )
        for r in range(n)
    )
    global_batch = inputs.batch_size_per_rank * n
    top = max(range(n), key=lambda r: per_rank[r].cost_ms)
    drivers = [TableCost(k, v) for k, v in sorted(table_cost[top].items(), key=lambda kv: -kv[1])[:5]]
    summary = PlanSummary.of(per_rank, drivers, cap.hbm, cap.ddr, a2a_bytes / global_batch, global_batch)
    return PlanEstimates(per_rank, summary)
