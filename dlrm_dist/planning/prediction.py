"""A calibrated plan's predicted training step per rank (no torch: read from the plan file alone).

A rank's work per step = its embedding shards' estimated cost (Perf.total: kernels from the
calibration, all-to-all bytes over the measured bandwidth: the owner's side) + what every rank
pays alike: the calibration's step overhead (fixed + per table), the latency of the all-to-alls
beyond the one sharding group the overhead was measured with (input ids, forward and backward
embeddings, and the splits: four per group), the receiving side of the all-to-alls (its own
batch's ids sent out, its pooled embeddings received and their gradients returned: a rank pays
it wherever the tables are) and the dense part (the inputs' ``dense``: GEMMs at the measured
rate, the gradient all-reduce). Without a calibration there is no step prediction: TorchRec's
constant bandwidths estimate the embedding part only, often 100x below a CPU step.

The wall-clock step shares each host's cores among its ranks: with more busy ranks than cores
(4 ranks on this 2-core machine) a rank runs at ``cores / busy ranks`` of a core until the
others finish (processor sharing, as the kernel's scheduler does), so its step is longer than
its work; with a core per rank the two are equal. The calibration's ``machine.cores`` is the
host's core count.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping, Optional, Sequence

from dlrm_dist.planning.calibration import step_overhead_ms
from dlrm_dist.planning.types import PlanEstimates, PlannerInputs

COLLECTIVES_PER_GROUP = 4


def sharding_groups(shards_by_type: Sequence[dict[str, int]]) -> int:
    """Sharding types with shards anywhere (TorchRec runs one set of all-to-alls per type)."""
    return len({t for by_type in shards_by_type for t, n in by_type.items() if n and t != "data_parallel"})


def shared_cores_ms(work_ms: Sequence[float], cores: int) -> list[float]:
    """When each rank of one host finishes ``work_ms`` (CPU ms) if the host's ``cores`` are shared
    fairly among the ranks still working (``n`` busy ranks each run at ``min(1, cores / n)``)."""
    order = sorted(range(len(work_ms)), key=lambda i: work_ms[i])
    finish = [0.0] * len(work_ms)
    now, done, busy = 0.0, 0.0, len(work_ms)
    for i in order:
        rate = min(1.0, cores / busy)
        now += (work_ms[i] - done) / rate
        done, finish[i], busy = work_ms[i], now, busy - 1
    return finish


def local_tables(shardings: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """The data-parallel tables of a plan, ``{module path: {table: sharding}}`` (``PlanFile.plan_data()``'s
    entries, or ``PlanView.shardings``' models): looked up on every rank, so none of their ids or
    embeddings goes through an all-to-all."""
    def kind(sharding: Any) -> str:
        return sharding["sharding_type"] if isinstance(sharding, Mapping) else sharding.sharding_type

    return frozenset(table for tables in shardings.values() for table, sharding in tables.items()
                     if kind(sharding) == "data_parallel")


def received(inputs: PlannerInputs, groups: int, local: Collection[str] = ()) -> tuple[float, float]:
    """(ids, pooled values) one rank's batch puts through the all-to-alls per step: every id of a
    sharded table goes to its owner and every such feature's pooled embedding comes back (none when
    no table is sharded; ``local``: the data-parallel tables, looked up locally)."""
    if groups == 0:
        return 0.0, 0.0
    batch = inputs.batch_size_per_rank
    sharded = [t for t in inputs.tables if t.name not in local]
    # ids: the table's pooling factor, as its shards' estimates take it; a dim-wide row per feature
    return (batch * sum(t.pooling_factor for t in sharded),
            float(batch * sum(t.dim * len(t.features) for t in sharded)))


def predicted_work_ms(inputs: PlannerInputs, estimates: PlanEstimates,
                      local: Collection[str] = ()) -> Optional[list[float]]:
    """Per rank: the predicted work of one training step (ms on a core of its own), or None
    when the plan was not calibrated; ``local``: the plan's data-parallel tables (local_tables)."""
    cal = inputs.calibration
    if cal is None:
        return None
    groups = sharding_groups([r.shards_by_type for r in estimates.per_rank])
    dense = (inputs.dense.flops_per_sample, inputs.dense.parameters) if inputs.dense is not None else None
    extra = step_overhead_ms(cal, len(inputs.tables), COLLECTIVES_PER_GROUP * max(groups - 1, 0), dense,
                             inputs.batch_size_per_rank, received(inputs, groups, local))
    return [r.cost_ms + extra for r in estimates.per_rank]


def predicted_step_ms(inputs: PlannerInputs, estimates: PlanEstimates,
                      local: Collection[str] = ()) -> Optional[list[float]]:
    """Per rank: the predicted wall-clock training step (ms), its host's cores shared among its
    ranks, or None when the plan was not calibrated; ``local`` as for predicted_work_ms."""
    work = predicted_work_ms(inputs, estimates, local)
    if work is None:
        return None
    cal, per_host = inputs.calibration, inputs.topology.ranks_per_host
    out: list[float] = []
    for start in range(0, len(work), per_host):
        out += shared_cores_ms(work[start:start + per_host], cal.machine.cores)
    return out
