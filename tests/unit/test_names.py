"""The names shared with TorchRec (dlrm_dist/names.py) are TorchRec's own, and every list
that offers them is that one list."""

from __future__ import annotations

from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.types import ShardingType

from dlrm_dist import names
from dlrm_dist.config import sections as schema
from dlrm_dist.optimizer_registry import EMBEDDING_STATES, OPTIMIZER_CLASSES
from dlrm_dist.planning import inputs, options


def test_names_are_torchrec_enum_values() -> None:
    assert set(names.SHARDING_TYPES) <= {t.value for t in ShardingType}
    assert set(names.COMPUTE_KERNELS) <= {k.value for k in EmbeddingComputeKernel}
    assert set(names.UVM_KERNELS) <= set(names.COMPUTE_KERNELS)


def test_one_list_everywhere() -> None:
    assert schema.SHARDING_TYPES is names.SHARDING_TYPES and inputs.SHARDING_TYPES is names.SHARDING_TYPES
    assert schema.EMBEDDING_OPTIMIZERS is names.EMBEDDING_OPTIMIZERS
    assert options.PLANNED_KERNELS is names.COMPUTE_KERNELS
    assert set(OPTIMIZER_CLASSES) == set(names.EMBEDDING_OPTIMIZERS) | set(names.DENSE_OPTIMIZERS)
    assert set(EMBEDDING_STATES) == set(names.EMBEDDING_OPTIMIZERS)
    assert set(names.CPU_FUSED_OPTIMIZERS) <= set(names.EMBEDDING_OPTIMIZERS)
