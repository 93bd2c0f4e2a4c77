"""The names this package shares with TorchRec and fbgemm, each defined once.

They are TorchRec's own strings (``ShardingType``, ``EmbeddingComputeKernel`` values; a unit
test checks them against the enums), kept here as plain strings so that configs and plan
inputs can be checked without importing TorchRec (seconds at start-up).
"""

from __future__ import annotations

# Sharding types TorchRec runs on CPU ranks over gloo and on CUDA, which the planner plans
# (TorchRec's grid_shard is not offered).
SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise")
# Compute kernels the planner considers (key-value and virtual tables need SSD/KV backends).
COMPUTE_KERNELS = ("dense", "fused", "fused_uvm", "fused_uvm_caching")
UVM_KERNELS = ("fused_uvm", "fused_uvm_caching")  # tables (or their caches) in unified memory

EMBEDDING_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
DENSE_OPTIMIZERS = ("sgd", "adagrad", "adam")
# fbgemm's CPU kernel implements only these fused optimizers (Adam, LAMB, ... are CUDA-only).
CPU_FUSED_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")

FUSED_DIM_MULTIPLE = 4  # fbgemm's fused embedding kernels need dim % 4 == 0

TABLE_PREFIX = "t_"  # a feature's own table is named t_<feature> (TorchRec's DLRM naming)
# The module path marker of embedding-table weights in a model's state dict
# ("...sparse_arch.embedding_bags.<table>.weight"): training, weights and checkpoints use it.
EMBEDDING_KEY = "embedding_bags."
