"""TorchRec's default EmbeddingShardingPlanner on the same inputs, for comparison.

Same topology, constraints and memory budget (a FixedPercentageStorageReservation of the
share our budgets leave out), rated by TorchRec's own perf model (NoopPerfModel: the
slowest rank's summed shard cost) — the figure our planner's bottleneck is compared with.

``fast=True`` keeps TorchRec's enumerator, proposers, partitioner and perf model but fills
the search space's estimates from our enumeration (options.py), which reproduces TorchRec's
estimators shard for shard (tests/unit/test_planner_estimates.py) while estimating one shard
per distinct size: the same search space in seconds instead of minutes. Options our
enumeration does not build (none today) fall back to TorchRec's own estimators.
``timeout_seconds`` is TorchRec's own proposal time limit (best plan so far is kept).

A managed table is constrained to row_wise + fused (torchrec_bridge.constraints). TorchRec's
sharder lists no row_wise for CPU, so on a CPU topology with managed tables the planner gets a
sharder that also lists row_wise, and every plain table keeps the CPU types it had.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Optional

from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.perf_models import NoopPerfModel
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import Perf, ShardingOption, Storage
from torchrec.distributed.types import ShardingPlan

from dlrm_dist.planning.inputs import MANAGED_SHARDING_TYPE
from dlrm_dist.planning.options import Enumerator
from dlrm_dist.planning.torchrec_bridge import constraints, meta_module, torchrec_topology
from dlrm_dist.planning.types import PlannerInputs


@dataclass
class DefaultPlannerResult:
    plan: ShardingPlan
    bottleneck_ms: float
    seconds: float


class OurEstimatesEnumerator(EmbeddingEnumerator):
    """TorchRec's enumerator whose estimates come from our (equal, cached) enumeration."""

    def __init__(self, inputs: PlannerInputs, **kw) -> None:
        super().__init__(**kw)
        self._ours = Enumerator(inputs)
        self._index = {t.name: i for i, t in enumerate(inputs.tables)}

    def populate_estimates(self, sharding_options: list[ShardingOption]) -> None:
        rest = []
        for so in sharding_options:
            i = self._index.get(so.name)
            if i is None or (so.sharding_type, so.compute_kernel) not in self._ours.candidates(self._ours.inputs.tables[i]):
                rest.append(so)
                continue
            o = self._ours.base_option(i, so.sharding_type, so.compute_kernel)
            if [list(s.size) for s in so.shards] != o.sizes.tolist():
                rest.append(so)  # another layout (e.g. a column-wise shard dim constraint): TorchRec estimates it
                continue
            for k, shard in enumerate(so.shards):
                shard.perf = Perf(*map(float, o.perf[k]))
                shard.storage = Storage(hbm=int(o.hbm[k]), ddr=int(o.ddr[k]))
        if rest:
            super().populate_estimates(rest)


class _CpuRowWiseSharder(EmbeddingBagCollectionSharder):
    """TorchRec's sharder that also lists row_wise on CPU (where it runs over gloo)."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = super().sharding_types(compute_device_type)
        return types + [MANAGED_SHARDING_TYPE] if MANAGED_SHARDING_TYPE not in types else types


def _sharder_and_constraints(inputs: PlannerInputs) -> tuple[EmbeddingBagCollectionSharder, dict[str, ParameterConstraints]]:
    """TorchRec's sharder and our constraints; row_wise listed on CPU for managed tables only."""
    cons = constraints(inputs)
    sharder = EmbeddingBagCollectionSharder()
    if inputs.topology.device != "cpu" or not any(t.managed for t in inputs.tables):
        return sharder, cons
    cpu_types = sharder.sharding_types("cpu")
    for t in inputs.tables:
        if not t.managed:
            kept = [st for st in (t.sharding_types or cpu_types) if st in cpu_types]
            cons[t.name] = dataclasses.replace(cons[t.name], sharding_types=kept or list(t.sharding_types or ()))
    return _CpuRowWiseSharder(), cons


def plan_with_torchrec(inputs: PlannerInputs, fast: bool = False,
                       timeout_seconds: Optional[int] = None) -> DefaultPlannerResult:
    """Runs TorchRec's default planner (all its proposers) and rates its best plan."""
    topology = torchrec_topology(inputs)
    reserve = 1.0 - (inputs.budgets.hbm_share if inputs.topology.device == "cuda" else inputs.budgets.ddr_share)
    sharder, cons = _sharder_and_constraints(inputs)
    start = time.perf_counter()
    enumerator = (OurEstimatesEnumerator(inputs, topology=topology, batch_size=inputs.batch_size_per_rank,
                                         constraints=cons) if fast else None)
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=inputs.batch_size_per_rank,
        constraints=cons,
        storage_reservation=FixedPercentageStorageReservation(percentage=reserve),
        enumerator=enumerator,
        timeout_seconds=timeout_seconds,
    )
    plan = planner.plan(meta_module(inputs), [sharder])
    seconds = time.perf_counter() - start
    # The planner keeps its chosen ShardingOptions (with TorchRec's estimates) here.
    rating = NoopPerfModel(topology).rate(planner._best_plan)  # noqa: SLF001
    return DefaultPlannerResult(plan, float(rating), seconds)
