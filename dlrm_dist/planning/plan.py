"""The sharding plan of a training job, decided before any process group exists.

Three sources, in order: a plan file (``--plan``, checked against the model and the job),
one sharding type forced for every table (``--sharding-type``, built with TorchRec's own
per-parameter generators so shard boundaries are exactly those TorchRec routes ids by),
or a planner on the job's own inputs (dlrm_dist's by default, or TorchRec's on the same inputs).
Each comes back as a PlanFile: the plan with its inputs and estimates.

Planning is deterministic, so every rank computes the same plan locally. The embedding
parameters must already carry their in-backward optimizer (``apply_optimizer_in_backward``):
that selects the fused kernel and lets the planner count optimizer state.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ShardingPlan

from dlrm_dist.distributed import resources
from dlrm_dist.names import FUSED_DIM_MULTIPLE
from dlrm_dist.planning import planfile
from dlrm_dist.planning.check import check_plan
from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.planfile import PlanFile
from dlrm_dist.planning.planner import make_plan_file, plan_file_for
from dlrm_dist.planning.torchrec_default import plan_with_torchrec
from dlrm_dist.planning.types import GB, Budgets, ExpectedTable, JobSpec, PlannerInputs, TableSpec, TopologySpec


def find_ebc(model: nn.Module) -> tuple[str, EmbeddingBagCollection]:
    """The model's tables as one collection, and the module path plans are keyed by.

    Managed tables (a ManagedCollisionEmbeddingBagCollection's) are planned with the others,
    under the plain collection's path (the wrapper's ``TABLES_PATH`` when every table is
    managed): sharding moves their entries to the managed collection (distributed.parallel.split_plan).
    """
    managed = [m for _, m in model.named_modules() if isinstance(m, ManagedCollisionEmbeddingBagCollection)]
    inner = {id(m._embedding_module) for m in managed}
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, EmbeddingBagCollection) and id(m) not in inner]
    if len(found) > 1 or not (found or managed):
        raise PlanError(f"expected one EmbeddingBagCollection in the model, found {len(found)}")
    if not managed:
        return found[0]
    configs = [c for _, m in found for c in m.embedding_bag_configs()]
    configs += [c for m in managed for c in m._embedding_module.embedding_bag_configs()]
    path = found[0][0] if found else getattr(model, "TABLES_PATH")
    return path, EmbeddingBagCollection(tables=configs, device=torch.device("meta"))  # a view: planning only


def managed_tables(model: nn.Module) -> frozenset[str]:
    """The names of the model's managed tables (those inside a ManagedCollisionEmbeddingBagCollection)."""
    return frozenset(c.name for _, m in model.named_modules() if isinstance(m, ManagedCollisionEmbeddingBagCollection)
                     for c in m._embedding_module.embedding_bag_configs())


def expected_tables(ebc: EmbeddingBagCollection) -> list[ExpectedTable]:
    return [ExpectedTable(c.name, c.num_embeddings, c.embedding_dim) for c in ebc.embedding_bag_configs()]


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
    path, ebc = find_ebc(model)
    module_plan = construct_module_sharding_plan(
        ebc, _forced_generators(ebc, sharding_type, world_size, local_size),
        local_size=local_size, world_size=world_size, device_type=device_type,
    )
    if sharding_type == "table_column_wise":
        # TorchRec has no generator for TWCW; its shards are column_wise's, kept on one host.
        for name, ps in module_plan.items():
            module_plan[name] = dataclasses.replace(ps, sharding_type="table_column_wise")
    return ShardingPlan({path: module_plan})


def _memory_gb(job: JobSpec, reserved: int) -> tuple[float, float]:
    """(device memory per rank, host memory) this job may give its tables, in GB.

    Host memory is the smaller of the node's RAM and the container's cgroup limit; ``reserved``
    bytes per rank are left to the dense part and the inputs (TorchRec's heuristic reservation;
    dlrm_dist/distributed/resources.py), from device memory on CUDA and from host memory on CPU.
    """
    host = resources.host_memory_bytes()
    if job.device.type == "cuda":
        return max(resources.device_memory_bytes(job.device) - reserved, 0) / GB, host / GB
    return 0.0, max(host - reserved * job.local_size, 0) / GB


def job_inputs(ebc: EmbeddingBagCollection, job: JobSpec, reserved: int = 0,
               managed: frozenset[str] = frozenset()) -> PlannerInputs:
    """Planner inputs describing this job's tables (``managed``: the managed ones' names) and this
    machine's topology."""
    hbm, ddr = _memory_gb(job, reserved)
    configs = ebc.embedding_bag_configs()
    pooling = job.pooling_factors or (1.0,) * len(configs)
    tables = tuple(
        TableSpec(name=c.name, rows=c.num_embeddings, dim=c.embedding_dim, pooling_factor=pf,
                  feature_names=tuple(c.feature_names), managed=c.name in managed)
        for c, pf in zip(configs, pooling)
    )
    topology = TopologySpec(world_size=job.world_size, ranks_per_host=job.local_size, device=job.device.type,
                            hbm_gb=hbm, ddr_gb=ddr)
    return PlannerInputs(tables=tables, topology=topology, budgets=Budgets(),
                         batch_size_per_rank=job.batch_size_per_rank, optimizer=job.optimizer)


def _keyed(plan: ShardingPlan, module_path: str) -> ShardingPlan:
    """``plan``'s tables under the model's module path (plans name the module they were made for)."""
    module_plan = {}
    for mp in plan.plan.values():
        module_plan.update(mp)
    return ShardingPlan({module_path: EmbeddingModuleShardingPlan(module_plan)})


def from_plan_file(model: nn.Module, path: str, job: JobSpec) -> PlanFile:
    """A plan file, checked against the model and job, its plan keyed to the model's module path."""
    module_path, ebc = find_ebc(model)
    pf = planfile.read(path)
    planned = pf.inputs.topology.world_size
    if planned != job.world_size:
        # Extra ranks would hold no table; missing ones would leave tables nowhere.
        raise PlanError(f"plan file {path} was made for {planned} ranks, but this job has {job.world_size}: "
                        f"make one for {job.world_size} (dlrm-plan make --world-size {job.world_size} ...) "
                        f"or run on {planned} ranks")
    per_host = pf.inputs.topology.ranks_per_host
    if per_host != job.local_size:
        # Placements are "rank:r/cuda:(r % per_host)": on another host size a rank would own a shard
        # on a GPU of another process (an 8-per-host plan on 2 x 4 GPUs puts rank 5's shards on cuda:5).
        raise PlanError(f"plan file {path} was made for {per_host} ranks per host, but this job runs "
                        f"{job.local_size} per host (LOCAL_WORLD_SIZE): make one for this layout (dlrm-plan make "
                        f"--world-size {job.world_size} --ranks-per-host {job.local_size} ...) or start "
                        f"{per_host} ranks per host")
    check_plan(pf.plan, expected_tables(ebc), job.world_size, job.device.type, origin=f"plan file {path}")
    return dataclasses.replace(pf, plan=_keyed(pf.plan, module_path))


def make_plan(
    model: nn.Module,
    job: JobSpec,
    sharding_type: Optional[str] = None,
    plan_file: Optional[str] = None,
    planner: str = "dlrm_dist",
) -> PlanFile:
    """The job's plan with its estimates (as a plan file holds them), without a process group.

    Every source is estimated by the same models on the same inputs (the job's tables,
    pooling factors, memory and optimizer), TorchRec's planner included: it plans on those
    inputs exactly as ``dlrm-plan compare --torchrec`` does.
    """
    if plan_file:
        return from_plan_file(model, plan_file, job)
    path, ebc = find_ebc(model)
    reserved = resources.dense_reservation_bytes(model, [ebc], job.batch_size_per_rank,
                                                 job.pooling_factors or (1.0,) * len(ebc.embedding_bag_configs()))
    inputs = job_inputs(ebc, job, reserved, managed_tables(model))
    if sharding_type:
        forced = forced_plan(model, sharding_type, job.world_size, job.local_size, job.device.type)
        return plan_file_for(forced, inputs, f"forced:{sharding_type}", module_path=path)
    if planner == "torchrec":
        return plan_file_for(_keyed(plan_with_torchrec(inputs).plan, path), inputs, "torchrec_default",
                             module_path=path)
    return make_plan_file(inputs, module_path=path)
