"""Between our placements and TorchRec's ShardingPlan, in both directions, and our placements in the
plan file's form without TorchRec (what ``dlrm-plan make`` writes: a plan becomes TorchRec's
ShardingPlan only in a job or a command that needs one; planfile.PlanFile converts it then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.planfile import EncodedPlan
from dlrm_dist.planning.shard_layout import placement as placement_string
from dlrm_dist.planning.types import TablePlacement

if TYPE_CHECKING:
    from torchrec.distributed.types import ParameterSharding, ShardingPlan

    from dlrm_dist.planning.options import Enumerator

# planfile's encoding (codec.encode) of the ParameterSharding fields the planner leaves unset, and of
# TorchRec's CacheParams with only a load factor: a test keeps them equal to encoding TorchRec's objects.
_UNSET_FIELDS = ("enforce_hbm", "stochastic_rounding", "bounds_check_mode", "output_dtype", "key_value_params")
CACHE_PARAMS_CLASS = "torchrec.distributed.types:CacheParams"
_CACHE_PARAMS_UNSET = ("algorithm", "multipass_prefetch_config", "precision", "prefetch_pipeline", "reserved_memory",
                       "stats")


def _cache_params(load_factor: Optional[float]) -> Optional[dict[str, Any]]:
    if load_factor is None:
        return None
    return {"dataclass": CACHE_PARAMS_CLASS,
            "fields": {"load_factor": load_factor, **{f: None for f in _CACHE_PARAMS_UNSET}}}


def plan_entry(tp: TablePlacement, device: str, local_size: int) -> dict[str, Any]:
    """One placed table in the plan file's form (planfile's encoding of ``parameter_sharding(tp, ...)``)."""
    o = tp.option
    ranks = [int(r) for r in tp.ranks]
    shards = None
    if o.sharding_type != "data_parallel":
        shards = [{"offsets": [int(x) for x in off], "sizes": [int(x) for x in size],
                   "placement": placement_string(device, r, local_size)}
                  for off, size, r in zip(o.offsets.tolist(), o.sizes.tolist(), ranks)]
    return {"sharding_type": o.sharding_type, "compute_kernel": o.kernel, "ranks": ranks, "shards": shards,
            "cache_params": _cache_params(o.cache_load_factor), **{f: None for f in _UNSET_FIELDS}}


def plan_entries(tables: list[TablePlacement], names: list[str], device: str, local_size: int,
                 module_path: str) -> EncodedPlan:
    """The placements as the plan file's "plan" (``to_sharding_plan``'s plan, encoded), without TorchRec."""
    return EncodedPlan({module_path: {names[tp.option.table]: plan_entry(tp, device, local_size) for tp in tables}})


def parameter_sharding(tp: TablePlacement, device: str, local_size: int) -> "ParameterSharding":
    """TorchRec's description of one placed table."""
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
    from torchrec.distributed.types import CacheParams, ParameterSharding

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
                     module_path: str) -> "ShardingPlan":
    """The placements as TorchRec's plan for the EmbeddingBagCollection at ``module_path``.

    The path is the model's to say (a training job's from its model; ``dlrm-plan make``'s from
    the trainer's wrapper, DLRMTrain.TABLES_PATH): planning does not know any model's layout.
    """
    from torchrec.distributed.types import EmbeddingModuleShardingPlan, ShardingPlan

    module_plan = EmbeddingModuleShardingPlan()
    for tp in tables:
        module_plan[names[tp.option.table]] = parameter_sharding(tp, device, local_size)
    return ShardingPlan({module_path: module_plan})


def table_shardings(plan: "ShardingPlan") -> dict[str, "ParameterSharding"]:
    """``{table: ParameterSharding}`` over every module of the plan."""
    out: dict[str, "ParameterSharding"] = {}
    for module_plan in plan.plan.values():
        out.update(dict(module_plan.items()))
    return out


def from_sharding_plan(plan: "ShardingPlan", enumerator: "Enumerator") -> list[TablePlacement]:
    """Our placements for a TorchRec plan (any planner's), estimated with TorchRec's models."""
    shardings = table_shardings(plan)
    names = [t.name for t in enumerator.inputs.tables]
    missing = [n for n in names if n not in shardings]
    if missing:
        raise PlanError(f"the plan has no entry for table(s) {missing}")
    return [_placement(i, shardings[n], enumerator) for i, n in enumerate(names)]


def _placement(index: int, ps: "ParameterSharding", enumerator: "Enumerator") -> TablePlacement:
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
