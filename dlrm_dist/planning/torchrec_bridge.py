"""The planner's inputs in TorchRec's terms: Topology, constraints, a meta-device module, estimator.

The meta module's weights carry the in-backward optimizer marking, which is how TorchRec's
storage estimator learns the optimizer state's size (rowwise_adagrad: one float per row;
adagrad: one per element; adam: two per element; sgd: none).

With a calibration in the inputs, the Topology carries its measured figures where TorchRec has a
knob for them (ddr_mem_bw: the fused kernel's forward bytes per ms; intra/inter_host_bw: the
all-to-all bandwidth; bwd_compute_multiplier: the measured backward / forward ratio), so TorchRec's
own planner sees them too. A kernel's cost has no such knob on CPU: its backward with fbgemm's
fused optimizer costs about ten forwards and hardly depends on the dim, and both depend on the
table's rows (cache misses). :class:`CalibratedPerfEstimator` therefore replaces each shard's
fwd/bwd compute with calibration.KernelModel's figure for the ids the shard looks up, and
keeps TorchRec's communication estimates (bytes over the measured bandwidth).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.planner import ParameterConstraints, Topology
from torchrec.distributed.planner.shard_estimators import EmbeddingPerfEstimator
from torchrec.distributed.planner.types import ShardingOption
from torchrec.distributed.types import CacheParams

from dlrm_dist.optimizer_registry import mark_in_backward
from dlrm_dist.planning.calibration import CalibrationModel, kernel_model
from dlrm_dist.planning.inputs import MANAGED_KERNEL, MANAGED_SHARDING_TYPE
from dlrm_dist.planning.types import GB, PlannerInputs, TableSpec

_BW_UNIT = GB / 1000  # TorchRec's bandwidths are bytes per millisecond
_BYTES_PER_GB = 1e9  # a calibration's GB/s are 1e9 bytes per second
_ID_BYTES, _EMB_BYTES = 8, 4
# Sharding types whose shards each see only part of the ids: divided over the world or the host.
_ROW_SPLIT = {"row_wise": "world", "table_row_wise": "host", "grid_shard": "host"}


def calibrated_bandwidths(cal: CalibrationModel, optimizer: str) -> dict[str, float]:
    """TorchRec Topology arguments (bytes/ms, ratios) that the calibration measured."""
    kernels = kernel_model(cal)
    dim, rows, batch, pf = 64, 1_000_000, 512, 20.0  # a typical shard: the bandwidth is a single figure
    ids = batch * pf
    fwd, bwd = kernels.ms("fused", optimizer, dim, rows, ids)
    fwd_bytes = ids * _ID_BYTES + ids * dim * _EMB_BYTES + batch * dim * _EMB_BYTES
    comms = cal.all_to_all.on(cal.cost_basis)[1] * _BYTES_PER_GB / 1000  # the work of the bytes on the cost basis
    return {"ddr_mem_bw": fwd_bytes / fwd, "intra_host_bw": comms, "inter_host_bw": comms,
            "bwd_compute_multiplier": bwd / fwd}


def torchrec_topology(inputs: PlannerInputs) -> Topology:
    """A Topology with the full device memory (our budgets are applied by the partitioner).

    Explicit bandwidth flags win over a calibration's figures; those win over TorchRec's constants.
    """
    t = inputs.topology
    kw: dict[str, Any] = {}
    if inputs.calibration is not None:
        kw.update(calibrated_bandwidths(inputs.calibration, inputs.optimizer))
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
        if t.managed:  # as options.py offers it (TorchRec's CPU sharder lists no row_wise: no CPU plan)
            kw.update(sharding_types=[MANAGED_SHARDING_TYPE], compute_kernels=[MANAGED_KERNEL])
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


def shard_ids(sharding_type: str, batch_per_rank: int, pooling_factor: float, world_size: int,
              ranks_per_host: int) -> float:
    """Ids one shard looks up per step: the global batch's, or its share for row-split types;
    a data-parallel replica looks up its own rank's batch only."""
    if sharding_type == "data_parallel":
        return batch_per_rank * pooling_factor
    ids = batch_per_rank * world_size * pooling_factor
    split = _ROW_SPLIT.get(sharding_type)
    return ids / (world_size if split == "world" else ranks_per_host) if split else ids


class CalibratedPerfEstimator(EmbeddingPerfEstimator):
    """TorchRec's estimator with each shard's compute from the calibration's measured kernels."""

    def __init__(self, topology: Topology, constraints: Optional[dict[str, ParameterConstraints]],
                 inputs: PlannerInputs) -> None:
        super().__init__(topology, constraints=constraints)
        assert inputs.calibration is not None
        self._inputs = inputs
        self._kernels = kernel_model(inputs.calibration)

    def estimate(self, sharding_options: list[ShardingOption], sharder_data_map: Any = None) -> None:
        super().estimate(sharding_options, sharder_data_map)  # comms: bytes over the measured bandwidth
        t = self._inputs.topology
        for so in sharding_options:
            pf = float(sum(so.input_lengths))
            ids = shard_ids(so.sharding_type, so.batch_size, pf, t.world_size, t.ranks_per_host)
            for shard in so.shards:
                rows, cols = int(shard.size[0]), int(shard.size[1])
                fwd, bwd = self._kernels.ms(so.compute_kernel, self._inputs.optimizer, cols, rows, ids)
                shard.perf = dataclasses.replace(shard.perf, fwd_compute=fwd, bwd_compute=bwd, prefetch_compute=0.0)


def perf_estimator(inputs: PlannerInputs, topology: Topology,
                   constraints: dict[str, ParameterConstraints]) -> EmbeddingPerfEstimator:
    """TorchRec's estimator, or the calibrated one when the inputs carry a calibration."""
    if inputs.calibration is None:
        return EmbeddingPerfEstimator(topology, constraints=constraints)
    return CalibratedPerfEstimator(topology, constraints, inputs)
