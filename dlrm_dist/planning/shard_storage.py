"""TorchRec's per-shard storage estimate (EmbeddingStorageEstimator), in closed form, without TorchRec.

The planner needs the HBM and DDR bytes of every shard of every option: 16,000 options for
1,000 tables. TorchRec's estimator builds a ShardingOption per option and walks its generic
machinery (sharder data, constraints, pipeline and key-value cases) to compute, for our cases,
a handful of integer formulas (torchrec/distributed/planner/shard_estimators.py,
``calculate_shard_storages`` and its helpers). This module is those formulas for what the
planner enumerates: an EmbeddingBagCollection's sharder (StorageUsageType.BASE), fp32 weights
and pooled fp32 outputs, int64 ids, no pipeline (PipelineType.NONE: the IO buffers count as
input + output), training (not inference), one feature per table with TorchRec's default
``num_poolings`` (1.0), and no key-value or virtual tables. Every operation is TorchRec's, in
its order and with Python's exact integer arithmetic (``storage * shard / table`` is an integer
division rounded once, as TorchRec computes it), so the bytes are equal, not close:
tests/unit/test_planner_storage.py checks them against TorchRec's estimator on a grid of table
sizes, sharding types, kernels, devices, optimizers, pooling factors and load factors.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

WEIGHT_BYTES = 4  # fp32 weights: the tensor's element_size()
OUTPUT_BYTES = 4  # pooled outputs in the weights' dtype (no output_dtype set)
ID_BYTES = 8  # TorchRec's BIGINT_DTYPE: ids are int64 in fbgemm's kernels
NUM_POOLINGS = 1.0  # TorchRec's default when the constraints give none
UVM_KERNELS = frozenset({"fused_uvm", "fused_uvm_caching"})  # weights in host memory (BASE storage)
CACHED_KERNELS = frozenset({"fused_uvm_caching"})  # a cache of the rows in HBM


def optimizer_multiplier(optimizer: str, dim: int) -> float:
    """Optimizer state per weight byte, as TorchRec's ``_get_optimizer_multipler`` for our classes
    (torch SGD / Adam / Adagrad, torchrec RowWiseAdagrad: one float per row of ``dim``)."""
    if optimizer == "sgd":
        return 0
    if optimizer == "adam":
        return 2
    if optimizer == "rowwise_adagrad":
        return 1 / dim
    return 1  # adagrad, and TorchRec's default for any other class


def io_sizes(sharding_type: str, sizes: Sequence[Sequence[int]], dim: int, pooling_factor: float,
              batch_size: int, world_size: int, ranks_per_host: int) -> tuple[list[int], list[int]]:
    """Per shard: ids in and pooled embeddings out per iteration (TorchRec's _calculate_*_shard_io_sizes)."""
    inputs = sum([pooling_factor * NUM_POOLINGS * batch_size])
    outputs = sum([min(1.0, pooling_factor) * NUM_POOLINGS * batch_size])
    if sharding_type == "data_parallel":
        return ([math.ceil(inputs * ID_BYTES)] * len(sizes), [math.ceil(outputs * dim * OUTPUT_BYTES)] * len(sizes))
    if sharding_type == "table_wise":
        return [math.ceil(inputs * world_size * ID_BYTES)], [math.ceil(outputs * world_size * dim * OUTPUT_BYTES)]
    if sharding_type in ("column_wise", "table_column_wise"):
        return ([math.ceil(inputs * world_size * ID_BYTES)] * len(sizes),
                [math.ceil(outputs * world_size * s[1] * OUTPUT_BYTES) for s in sizes])
    if sharding_type in ("row_wise", "table_row_wise"):
        per = inputs / (world_size if sharding_type == "row_wise" else ranks_per_host)
        return ([math.ceil(per * world_size * ID_BYTES) if s[0] * s[1] != 0 else 0 for s in sizes],
                [math.ceil(outputs * world_size * s[1] * OUTPUT_BYTES) if s[0] * s[1] != 0 else 0 for s in sizes])
    raise ValueError(f"no storage formula for sharding type {sharding_type!r}")


@functools.lru_cache(maxsize=4096)
def _io_totals(sharding_type: str, sizes: tuple[tuple[int, int], ...], dim: int, pooling_factor: float,
               batch_size: int, world_size: int, ranks_per_host: int) -> tuple[int, ...]:
    """Per shard: input + output bytes (the IO buffers' storage), shared by a layout's kernels (cached)."""
    ins, outs = io_sizes(sharding_type, sizes, dim, pooling_factor, batch_size, world_size, ranks_per_host)
    return tuple(i + o for i, o in zip(ins, outs))


def _specific_sizes(storage: int, rows: int, dim: int, sizes: Sequence[Sequence[int]], sharding_type: str,
                    multiplier: float, clf: Optional[float]) -> list[int]:
    """Weights + optimizer state + cache bookkeeping per shard (TorchRec's _calculate_storage_specific_sizes)."""
    out = []
    for r, c in sizes:
        tensor = math.ceil(storage * (r * c) / (rows * dim)) if sharding_type != "data_parallel" else storage
        aux = math.ceil(r * (4 + clf * 16)) if clf is not None else 0
        out.append(aux + tensor + math.ceil(tensor * multiplier))
    return out


def shard_storages(sizes: Sequence[Sequence[int]], rows: int, dim: int, sharding_type: str, kernel: str,
                   device: str, optimizer: str, pooling_factor: float, batch_size: int, world_size: int,
                   ranks_per_host: int, caching_ratio: Optional[float]) -> list[tuple[int, int]]:
    """(HBM bytes, DDR bytes) of each shard of ``sizes`` (rows x cols) of a ``rows`` x ``dim`` table.

    ``caching_ratio`` is the cache load factor of a ``fused_uvm_caching`` option (TorchRec's
    UVM_CACHING_RATIO, 0.2, when None); other kernels ignore it, as TorchRec does.
    """
    io = _io_totals(sharding_type, tuple(map(tuple, sizes)), dim, pooling_factor, batch_size, world_size,
                    ranks_per_host)
    weights = rows * dim * WEIGHT_BYTES
    on_host = kernel in UVM_KERNELS or device == "cpu"
    hbm, ddr = (0, weights) if on_host else (weights, 0)
    cached = kernel in CACHED_KERNELS
    ratio = caching_ratio if caching_ratio else 0.2
    if cached:
        hbm = round(ddr * ratio)
    multiplier = optimizer_multiplier(optimizer, dim)
    hbm_specific = _specific_sizes(hbm, rows, dim, sizes, sharding_type, multiplier, ratio if cached else None)
    ddr_specific = _specific_sizes(ddr, rows, dim, sizes, sharding_type, multiplier, None)
    hbm_sizes = [h + b if device == "cuda" else 0 for h, b in zip(hbm_specific, io)]
    ddr_sizes = [d + b if device == "cpu" else d for d, b in zip(ddr_specific, io)]
    return list(zip(hbm_sizes, ddr_sizes))
