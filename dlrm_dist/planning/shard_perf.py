"""TorchRec's default per-shard perf estimate (EmbeddingPerfEstimator), in closed form, without TorchRec.

The planner needs the six perf components (ms per iteration) of every distinct shard of every
option. TorchRec's estimator computes them from a ShardingOption through its evaluator classes
(torchrec/distributed/planner/estimator/estimator.py) and, for every shard, looks up its
hardware config's annotations with ``dir(config)``: about 1 ms per shard, 60% of planning 1,000
tables, and importing TorchRec alone takes longer than the whole plan should. This module is
those formulas for what the planner enumerates, with TorchRec's default config
(``EmbeddingPerfEstimatorConfig``: every coefficient 1.0 and no hash-size term, no backward
coefficients, the block-usage penalty for table-/column-wise only), fp32 weights and pooled fp32
outputs, int64 ids, no qcomm codecs, no feature processor (unweighted), one feature per table
with TorchRec's default ``num_poolings`` (1.0), no cache statistics (so no prefetch cost), no
prefetch pipeline and no pod (the table-row-wise group is a host). Every operation is
TorchRec's, in its order and with the same Python types, so the floats are equal, not close:
tests/unit/test_planner_perf.py checks them against TorchRec's estimator on a grid of shapes,
sharding types, kernels, devices, load factors, world sizes and bandwidths, and on the real
enumeration.

A calibrated estimate (planning/torchrec_bridge.py's CalibratedPerfEstimator) is not computed
here: the enumerator keeps TorchRec's path for calibrated inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from dlrm_dist.planning.types import GB, PlannerInputs

# torchrec/distributed/planner/constants.py (a test keeps them equal)
HBM_MEM_BW: float = 897 * 1024 * 1024 * 1024 / 1000  # bytes/ms
DDR_MEM_BW: float = 51 * 1024 * 1024 * 1024 / 1000
HBM_TO_DDR_MEM_BW: float = 32 * 1024 * 1024 * 1024 / 1000
INTRA_NODE_BANDWIDTH: float = 600 * 1024 * 1024 * 1024 / 1000
CROSS_NODE_BANDWIDTH: float = 12.5 * 1024 * 1024 * 1024 / 1000
BWD_COMPUTE_MULTIPLIER: float = 2
UVM_CACHING_RATIO: float = 0.2
BATCHED_COPY_PERF_FACTOR: float = 2.455
FULL_BLOCK_EMB_DIM: int = 128
HALF_BLOCK_PENALTY: float = 1.15
QUARTER_BLOCK_PENALTY: float = 1.75
DP_ELEMENTWISE_KERNELS_PERF_FACTOR: float = 9.22
NUM_POOLINGS: float = 1.0
MIN_LOOKUP_DIM = 32  # table-wise lookups read at least 32 columns (TorchRec's use_min_dim_for_lookup)

ID_BYTES = 8  # BIGINT_DTYPE: ids are int64 in fbgemm's kernels
WEIGHT_BYTES = 4  # fp32 weights: the tensor's element_size(), also the comms' data type (no qcomms)

# The default config's coefficients (all sharding types alike): input read, lookup, output, hash size.
_READ, _LOOKUP, _OUTPUT, _HASH = 1.0, 1.0, 1.0, 0.0
_BW_UNIT = GB / 1000  # our GB/s flags in TorchRec's bytes per ms (torchrec_bridge.torchrec_topology's rule)
_TABLE_WISE_LIKE = frozenset({"table_wise", "column_wise", "table_column_wise"})


@dataclass(frozen=True)
class Bandwidths:
    """The Topology figures TorchRec's estimator reads (bytes/ms, and the backward/forward ratio)."""

    hbm: float = HBM_MEM_BW
    ddr: float = DDR_MEM_BW
    hbm_to_ddr: float = HBM_TO_DDR_MEM_BW
    intra_host: float = INTRA_NODE_BANDWIDTH
    inter_host: float = CROSS_NODE_BANDWIDTH
    bwd_compute_multiplier: float = BWD_COMPUTE_MULTIPLIER

    @classmethod
    def of(cls, inputs: PlannerInputs) -> "Bandwidths":
        """The bandwidths torchrec_bridge.torchrec_topology gives TorchRec for uncalibrated inputs:
        TorchRec's constants, each replaced by its flag when given."""
        if inputs.calibration is not None:
            raise ValueError("calibrated inputs are estimated by TorchRec's path (CalibratedPerfEstimator)")
        t = inputs.topology
        kw = {ours: getattr(t, flag) * _BW_UNIT
              for flag, ours in (("hbm_bw_gbps", "hbm"), ("ddr_bw_gbps", "ddr"), ("intra_host_bw_gbps", "intra_host"),
                                 ("inter_host_bw_gbps", "inter_host")) if getattr(t, flag) is not None}
        return cls(**kw)


def device_bw(device: str, kernel: str, bw: Bandwidths, caching_ratio: Optional[float]) -> float:
    """The kernel's memory bandwidth (TorchRec's kernel_bw_lookup, no prefetch pipeline)."""
    ratio = caching_ratio if caching_ratio is not None else UVM_CACHING_RATIO
    if device == "cpu" and kernel == "dense":
        return 0.5 * bw.ddr
    if device == "cpu" and kernel == "fused":
        return 1 * bw.ddr
    if device == "cuda" and kernel == "dense":
        return 0.5 * bw.hbm
    if device == "cuda" and kernel == "fused":
        return 1 * bw.hbm
    if device == "cuda" and kernel == "fused_uvm":
        return bw.hbm_to_ddr / 10
    if device == "cuda" and kernel == "fused_uvm_caching":
        return (ratio * bw.hbm + (1 - ratio) * bw.hbm_to_ddr) / 10
    raise ValueError(f"no kernel bandwidth for compute device {device!r}, compute kernel {kernel!r}")


def _comms_bw(bw: Bandwidths, world_size: int, local_world_size: int, all_reduce: bool = False) -> float:
    """TorchRec's BasicCommsBandwidths.get_bw: one NIC per GPU for an all-reduce; else within a host or across."""
    if all_reduce:
        return bw.inter_host * local_world_size
    return bw.intra_host if world_size <= local_world_size else bw.inter_host


def block_usage_penalty(dim: int) -> float:
    """TorchRec's compute_block_usage_penalty (fbgemm's kernel: 32 threads x 4-vectors)."""
    if dim < FULL_BLOCK_EMB_DIM:
        return HALF_BLOCK_PENALTY if dim >= 64 else QUARTER_BLOCK_PENALTY
    return 1.0


@dataclass(frozen=True)
class ShardContext:
    """What one shard's estimate depends on (TorchRec's ShardPerfContext, our cases)."""

    sharding_type: str
    hash_size: int  # the shard's rows
    emb_dim: int  # the shard's columns
    pooling_factor: float
    batch_size: int
    world_size: int
    local_world_size: int
    device_bw: float
    bw: Bandwidths

    @property
    def batch_inputs(self) -> float:
        return sum([self.pooling_factor * NUM_POOLINGS * self.batch_size])

    @property
    def batch_outputs(self) -> float:
        return sum([min(1.0, self.pooling_factor) * NUM_POOLINGS * self.batch_size])


def _fwd_compute(c: ShardContext) -> float:
    """Input read + embedding lookup + output write, over the kernel's bandwidth (with TorchRec's sizes)."""
    st, bi, w, e = c.sharding_type, c.batch_inputs, c.world_size, c.emb_dim
    penalty = 1.0
    if st == "data_parallel":
        read = math.ceil(bi * ID_BYTES)
        lookup = bi * e * WEIGHT_BYTES
        out = c.batch_outputs * e * WEIGHT_BYTES
    elif st == "row_wise":
        read = math.ceil(bi / w * w * ID_BYTES)
        lookup = bi / w * w * e * WEIGHT_BYTES
        out = c.batch_outputs * w * e * WEIGHT_BYTES
    elif st == "table_row_wise":
        group = c.local_world_size
        read = math.ceil(bi / group * w * ID_BYTES)
        lookup = bi / group * w * e * WEIGHT_BYTES
        out = c.batch_outputs * w * e * WEIGHT_BYTES
    elif st in _TABLE_WISE_LIKE:
        penalty = block_usage_penalty(e)
        read = math.ceil(bi * w * ID_BYTES)
        lookup = bi * w * max(e, MIN_LOOKUP_DIM) * WEIGHT_BYTES
        out = c.batch_outputs * w * e * WEIGHT_BYTES
    else:
        raise ValueError(f"no perf formula for sharding type {st!r}")
    size = _READ * read + _LOOKUP * lookup + _OUTPUT * out + _HASH * c.hash_size
    return size * penalty / c.device_bw


def _output_write(c: ShardContext) -> float:
    """The pooled embeddings' bytes a shard sends (all-to-all or reduce-scatter) per iteration."""
    return c.batch_outputs * c.world_size * c.emb_dim * WEIGHT_BYTES


def _group_all_to_all(c: ShardContext) -> float:
    """Table-row-wise's all-to-all across host groups (none within one group)."""
    groups = max(1, c.world_size // c.local_world_size)
    if groups <= 1:
        return 0.0
    return c.batch_outputs * groups * c.emb_dim * WEIGHT_BYTES / _comms_bw(c.bw, groups, 1)


def _comms(c: ShardContext) -> tuple[float, float]:
    """(forward, backward) communication ms."""
    st, w, l = c.sharding_type, c.world_size, c.local_world_size
    if st == "data_parallel":
        table = c.hash_size * c.emb_dim * WEIGHT_BYTES
        nodes = min(w / l, 2)
        cbw = _comms_bw(c.bw, w, l, all_reduce=True)
        all_reduce = table * (2 * nodes - 1) / nodes / cbw if cbw and cbw > 0 else 0.0
        if w > 2 * l:
            all_reduce *= 2
        optimizer = table * DP_ELEMENTWISE_KERNELS_PERF_FACTOR / c.device_bw if c.device_bw > 0 else 0.0
        return 0, all_reduce + optimizer
    out = _output_write(c)
    if st in _TABLE_WISE_LIKE:
        return out / _comms_bw(c.bw, w, l), out / _comms_bw(c.bw, w, l)
    copy = out * BATCHED_COPY_PERF_FACTOR / c.device_bw
    if st == "row_wise":
        return out / _comms_bw(c.bw, w, l), out / _comms_bw(c.bw, w, l) + copy
    if st == "table_row_wise":
        inter = _group_all_to_all(c)
        # Within the group (a host: no pod): TorchRec sizes it min(group, local) = the host's ranks.
        intra = out / _comms_bw(c.bw, l, l)
        return intra + inter, inter + intra + copy
    raise ValueError(f"no perf formula for sharding type {c.sharding_type!r}")


def _input_dist(c: ShardContext) -> float:
    """The ids' all-to-all to the shard (none for a data-parallel replica)."""
    if c.sharding_type == "data_parallel":
        return 0.0
    return math.ceil(c.batch_inputs * c.world_size * ID_BYTES) / _comms_bw(c.bw, c.world_size, c.local_world_size)


def shard_perf(c: ShardContext) -> tuple[float, float, float, float, float, float]:
    """(fwd_compute, fwd_comms, bwd_compute, bwd_comms, input_dist_comms, prefetch_compute) in ms:
    TorchRec's Perf fields in types.PERF_FIELDS' order. No cache statistics: no prefetch cost."""
    fwd = _fwd_compute(c)
    fwd_comms, bwd_comms = _comms(c)
    bwd = fwd * c.bw.bwd_compute_multiplier + 0.0  # + the (unweighted) indice-weights kernel
    return fwd, fwd_comms, bwd, bwd_comms, _input_dist(c), 0.0
