"""The planner's inputs in TorchRec's terms: Topology, constraints, a meta-device module.

The meta module's weights carry the in-backward optimizer marking, which is how TorchRec's
storage estimator learns the optimizer state's size (rowwise_adagrad: one float per row;
adagrad: one per element; adam: two per element; sgd: none).
"""

from __future__ import annotations

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.planner import ParameterConstraints, Topology
from torchrec.distributed.types import CacheParams

from dlrm_dist.optimizer_registry import mark_in_backward
from dlrm_dist.planning.types import GB, PlannerInputs, TableSpec

_BW_UNIT = GB / 1000  # TorchRec's bandwidths are bytes per millisecond


def torchrec_topology(inputs: PlannerInputs) -> Topology:
    """A Topology with the full device memory (our budgets are applied by the partitioner)."""
    t = inputs.topology
    kw = {}
    for ours, theirs in (("hbm_bw_gbps", "hbm_mem_bw"), ("ddr_bw_gbps", "ddr_mem_bw"),
                         ("intra_host_bw_gbps", "intra_host_bw"), ("inter_host_bw_gbps", "inter_host_bw")):
        if getattr(t, ours) is not None:
            kw[theirs] = getattr(t, ours) * _BW_UNIT
    return Topology(
        world_size=t.world_size,
        local_world_size=t.ranks_per_host,
        compute_device=t.device,
        hbm_cap=int(t.hbm_gb * GB) if t.device == "cuda" else 0,
        ddr_cap=int(t.ddr_gb * GB / t.ranks_per_host),
        **kw,
    )


def cache_load_factor(inputs: PlannerInputs, table: TableSpec) -> float:
    return table.cache_load_factor if table.cache_load_factor is not None else inputs.budgets.cache_load_factor


def constraints(inputs: PlannerInputs) -> dict[str, ParameterConstraints]:
    """Pooling factors, allowed types/kernels and cache budgets, per table."""
    out = {}
    for t in inputs.tables:
        kw = {}
        if t.sharding_types:
            kw["sharding_types"] = list(t.sharding_types)
        if t.compute_kernels:
            kw["compute_kernels"] = list(t.compute_kernels)
        if inputs.topology.device == "cuda":
            kw["cache_params"] = CacheParams(load_factor=cache_load_factor(inputs, t))
        out[t.name] = ParameterConstraints(pooling_factors=[t.pooling_factor], **kw)
    return out


def meta_module(inputs: PlannerInputs) -> EmbeddingBagCollection:
    """The tables as a meta-device EmbeddingBagCollection, weights marked with the optimizer."""
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=t.name, embedding_dim=t.dim, num_embeddings=t.rows, feature_names=list(t.features))
            for t in inputs.tables
        ],
        device=torch.device("meta"),
    )
    mark_in_backward(ebc.parameters(), inputs.optimizer, lr=0.01, eps=1e-8)
    return ebc
