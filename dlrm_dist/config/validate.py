"""Checks that need the job as well as the config: world size, device, kernels.

All of them run before a process group exists, so bad input fails fast on every rank
with the same message instead of hanging a collective.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.config.sections import Config
from dlrm_dist.names import CPU_FUSED_OPTIMIZERS, FUSED_DIM_MULTIPLE

if TYPE_CHECKING:
    from dlrm_dist.features.schema import TableDef



def validate_for_launch(config: Config, tables: Sequence["TableDef"], world_size: int, device_type: str = "cpu") -> None:
    """Everything about the job that can be checked before ``init_process_group``.

    ``tables`` are the model's (model/spec.py has already checked them against the schema).
    """
    if world_size < 1:
        raise ConfigError(f"world size {world_size} must be >= 1")
    gbs = config.train.global_batch_size
    if gbs % world_size:
        lower = gbs - gbs % world_size
        raise ConfigError(
            f"train.global_batch_size={gbs} is not divisible by the world size {world_size}; "
            f"use a multiple of {world_size}, e.g. {lower or world_size} or {lower + world_size}"
        )
    st = config.sharding.sharding_type
    odd = [t for t in tables if t.dim % FUSED_DIM_MULTIPLE]
    if st != "data_parallel" and odd:
        t, m = odd[0], FUSED_DIM_MULTIPLE
        lower = [x for x in (t.dim - t.dim % m,) if x > 0]
        hint = " or ".join(str(x) for x in lower + [t.dim + m - t.dim % m])
        raise ConfigError(
            f"table {t.name} has embedding dim {t.dim}, which fbgemm's fused kernel cannot take "
            f"(sharding type {st or 'chosen by the planner'}): it needs a multiple of {m}, e.g. {hint} "
            "(set it with model.embedding_dim or the schema's dim); or use --sharding-type data_parallel"
        )
    opt = config.optim.embedding_optimizer
    if device_type == "cpu" and st != "data_parallel" and opt not in CPU_FUSED_OPTIMIZERS:
        raise ConfigError(
            f"optim.embedding_optimizer={opt!r} has no fused CPU kernel in fbgemm (CPU supports "
            f"{', '.join(CPU_FUSED_OPTIMIZERS)}); use one of those, run on CUDA, or replicate "
            "the tables with --sharding-type data_parallel (then torch's optimizer is used)"
        )
