"""Builds the TorchRec ``ShardingPlan`` for a job, before any process group exists.

Two ways:
- one sharding type forced for every table (``--sharding-type``), built with TorchRec's
  own per-parameter generators (``table_wise``, ``row_wise``, ...), so shard boundaries
  are exactly those TorchRec routes ids by;
- otherwise TorchRec's ``EmbeddingShardingPlanner`` on a Topology of the actual job.

Planning is deterministic, so every rank computes the same plan locally. The embedding
parameters must already carry their in-backward optimizer (``apply_optimizer_in_backward``):
that selects the fused kernel and lets the planner count optimizer state.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ParameterSharding, ShardingPlan

from dlrm_dist.config.errors import ConfigError

FUSED_DIM_MULTIPLE = 4


class PlanError(ConfigError):
    """The requested placement cannot be built; the message says why and what would work."""


def _find_ebc(model: nn.Module) -> tuple[str, EmbeddingBagCollection]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)]
    if len(found) != 1:
        raise PlanError(f"expected one EmbeddingBagCollection in the model, found {len(found)}")
    return found[0]


def _table_wise_ranks(ebc: EmbeddingBagCollection, world_size: int) -> dict[str, int]:
    """Greedy by size: the largest remaining table goes to the least loaded rank."""
    load = [0] * world_size
    ranks = {}
    for cfg in sorted(ebc.embedding_bag_configs(), key=lambda c: -c.num_embeddings * c.embedding_dim):
        r = min(range(world_size), key=lambda i: (load[i], i))
        ranks[cfg.name] = r
        load[r] += cfg.num_embeddings * cfg.embedding_dim
    return ranks


def _check_column_shards(name: str, dim: int, num_shards: int) -> None:
    shard = dim // num_shards
    if dim % num_shards or shard % FUSED_DIM_MULTIPLE:
        raise PlanError(
            f"table {name}: embedding_dim={dim} cannot be split column-wise into {num_shards} "
            f"shards whose width is a multiple of {FUSED_DIM_MULTIPLE} (fbgemm's fused kernel); "
            f"use an embedding_dim that is a multiple of {FUSED_DIM_MULTIPLE * num_shards}"
        )


def _forced_generators(ebc: EmbeddingBagCollection, sharding_type: str, world_size: int, local_size: int) -> dict:
    hosts = max(1, world_size // local_size)
    gens = {}
    tw_ranks = _table_wise_ranks(ebc, world_size)
    for i, cfg in enumerate(ebc.embedding_bag_configs()):
        host = i % hosts
        host_ranks = list(range(host * local_size, (host + 1) * local_size))
        if sharding_type == "data_parallel":
            gens[cfg.name] = data_parallel()
        elif sharding_type == "table_wise":
            gens[cfg.name] = table_wise(rank=tw_ranks[cfg.name])
        elif sharding_type == "row_wise":
            gens[cfg.name] = row_wise()
        elif sharding_type == "table_row_wise":
            gens[cfg.name] = table_row_wise(host_index=host)
        elif sharding_type == "column_wise":
            _check_column_shards(cfg.name, cfg.embedding_dim, world_size)
            gens[cfg.name] = column_wise(ranks=list(range(world_size)))
        elif sharding_type == "table_column_wise":
            _check_column_shards(cfg.name, cfg.embedding_dim, local_size)
            gens[cfg.name] = column_wise(ranks=host_ranks)
        else:
            raise PlanError(f"unknown sharding type {sharding_type!r}")
    return gens


def forced_plan(model: nn.Module, sharding_type: str, world_size: int, local_size: int, device_type: str) -> ShardingPlan:
    """Every table sharded with ``sharding_type``."""
    path, ebc = _find_ebc(model)
    module_plan = construct_module_sharding_plan(
        ebc,
        _forced_generators(ebc, sharding_type, world_size, local_size),
        local_size=local_size,
        world_size=world_size,
        device_type=device_type,
    )
    if sharding_type == "table_column_wise":
        # TorchRec has no generator for TWCW; its shards are column_wise's, kept on one host.
        for name, ps in module_plan.items():
            module_plan[name] = dataclasses.replace(ps, sharding_type="table_column_wise")
    return ShardingPlan({path: module_plan})


def planner_plan(model: nn.Module, world_size: int, local_size: int, device_type: str, batch_size: int) -> ShardingPlan:
    """TorchRec's EmbeddingShardingPlanner on the job's own topology."""
    topology = Topology(world_size=world_size, local_world_size=local_size, compute_device=device_type)
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size)
    return planner.plan(model, [EmbeddingBagCollectionSharder()])


def make_plan(
    model: nn.Module,
    world_size: int,
    local_size: int,
    device: torch.device,
    batch_size_per_rank: int,
    sharding_type: str | None = None,
) -> ShardingPlan:
    """The plan for this job (forced type or planner), without a process group."""
    if sharding_type:
        return forced_plan(model, sharding_type, world_size, local_size, device.type)
    return planner_plan(model, world_size, local_size, device.type, batch_size_per_rank)


def module_plans(plan: ShardingPlan) -> dict[str, dict[str, ParameterSharding]]:
    """``{module path: {table: ParameterSharding}}`` as plain dicts."""
    return {path: dict(mp.items()) for path, mp in plan.plan.items()}
