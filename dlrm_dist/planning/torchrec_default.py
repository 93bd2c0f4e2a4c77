"""TorchRec's default EmbeddingShardingPlanner on the same inputs, for comparison.

Same topology, constraints and memory budget (a FixedPercentageStorageReservation of the
share our budgets leave out), rated by TorchRec's own perf model (NoopPerfModel: the
slowest rank's summed shard cost) — the figure our planner's bottleneck is compared with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.perf_models import NoopPerfModel
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.types import ShardingPlan

from dlrm_dist.planning.torchrec_bridge import constraints, meta_module, torchrec_topology
from dlrm_dist.planning.types import PlannerInputs


@dataclass
class DefaultPlannerResult:
    plan: ShardingPlan
    bottleneck_ms: float
    seconds: float


def plan_with_torchrec(inputs: PlannerInputs) -> DefaultPlannerResult:
    """Runs TorchRec's default planner (all its proposers) and rates its best plan."""
    topology = torchrec_topology(inputs)
    reserve = 1.0 - (inputs.budgets.hbm_share if inputs.topology.device == "cuda" else inputs.budgets.ddr_share)
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=inputs.batch_size_per_rank,
        constraints=constraints(inputs),
        storage_reservation=FixedPercentageStorageReservation(percentage=reserve),
    )
    start = time.perf_counter()
    plan = planner.plan(meta_module(inputs), [EmbeddingBagCollectionSharder()])
    seconds = time.perf_counter() - start
    # The planner keeps its chosen ShardingOptions (with TorchRec's estimates) here.
    rating = NoopPerfModel(topology).rate(planner._best_plan)  # noqa: SLF001
    return DefaultPlannerResult(plan, float(rating), seconds)
