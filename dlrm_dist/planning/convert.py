"""Between our placements and TorchRec's ShardingPlan, in both directions."""

from __future__ import annotations

from typing import Optional

import numpy as np
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.sharding_plan import placement as placement_string
from torchrec.distributed.types import CacheParams, EmbeddingModuleShardingPlan, ParameterSharding, ShardingPlan

from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.options import Enumerator
from dlrm_dist.planning.types import TablePlacement


def parameter_sharding(tp: TablePlacement, device: str, local_size: int) -> ParameterSharding:
    """TorchRec's description of one placed table."""
    o = tp.option
    ranks = [int(r) for r in tp.ranks]
    spec = None
    if o.sharding_type != "data_parallel":
        spec = EnumerableShardingSpec([
            ShardMetadata(shard_offsets=[int(x) for x in off], shard_sizes=[int(x) for x in size],
                          placement=placement_string(device, r, local_size))
            for off, size, r in zip(o.offsets, o.sizes, ranks)
        ])
    cache = CacheParams(load_factor=o.cache_load_factor) if o.cache_load_factor is not None else None
    return ParameterSharding(sharding_type=o.sharding_type, compute_kernel=o.kernel, ranks=ranks,
                             sharding_spec=spec, cache_params=cache)


def to_sharding_plan(tables: list[TablePlacement], names: list[str], device: str, local_size: int,
                     module_path: str) -> ShardingPlan:
    """The placements as TorchRec's plan for the EmbeddingBagCollection at ``module_path``.

    The path is the model's to say (a training job's from its model; ``dlrm-plan make``'s from
    the trainer's wrapper, DLRMTrain.TABLES_PATH): planning does not know any model's layout.
    """
    module_plan = EmbeddingModuleShardingPlan()
    for tp in tables:
        module_plan[names[tp.option.table]] = parameter_sharding(tp, device, local_size)
    return ShardingPlan({module_path: module_plan})


def table_shardings(plan: ShardingPlan) -> dict[str, ParameterSharding]:
    """``{table: ParameterSharding}`` over every module of the plan."""
    out: dict[str, ParameterSharding] = {}
    for module_plan in plan.plan.values():
        out.update(dict(module_plan.items()))
    return out


def from_sharding_plan(plan: ShardingPlan, enumerator: Enumerator) -> list[TablePlacement]:
    """Our placements for a TorchRec plan (any planner's), estimated with TorchRec's models."""
    shardings = table_shardings(plan)
    names = [t.name for t in enumerator.inputs.tables]
    missing = [n for n in names if n not in shardings]
    if missing:
        raise PlanError(f"the plan has no entry for table(s) {missing}")
    return [_placement(i, shardings[n], enumerator) for i, n in enumerate(names)]


def _placement(index: int, ps: ParameterSharding, enumerator: Enumerator) -> TablePlacement:
    load_factor: Optional[float] = ps.cache_params.load_factor if ps.cache_params else None
    if ps.sharding_spec is None:  # data parallel: one replica per rank
        n = enumerator.inputs.topology.world_size
        table = enumerator.inputs.tables[index]
        sizes, offsets = [[table.rows, table.dim]] * n, [[0, 0]] * n
        ranks = list(range(n))
    else:
        shards = ps.sharding_spec.shards
        sizes = [list(s.shard_sizes) for s in shards]
        offsets = [list(s.shard_offsets) for s in shards]
        ranks = [s.placement.rank() for s in shards]
    option = enumerator.option_for(index, ps.sharding_type, ps.compute_kernel, sizes, offsets, load_factor)
    return TablePlacement(option, np.asarray(ranks, dtype=np.int64))
