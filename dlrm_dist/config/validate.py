"""Checks that need the job as well as the config: world size, device, kernels.

All of them run before a process group exists, so bad input fails fast on every rank
with the same message instead of hanging a collective.
"""

from __future__ import annotations

from dlrm_dist.config.arch import parse_mlp
from dlrm_dist.config.errors import ConfigError
from dlrm_dist.config.schema import Config

NUM_DENSE_FEATURES = 13  # Criteo's integer features, also what the synthetic data makes
FUSED_DIM_MULTIPLE = 4  # fbgemm's fused embedding kernels need dim % 4 == 0
# fbgemm's CPU kernel implements only these fused optimizers (Adam, LAMB, ... are CUDA-only).
CPU_FUSED_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")


def validate_model(config: Config) -> None:
    """Architecture strings and their agreement with the data and interaction."""
    m = config.model
    bottom = parse_mlp(m.bottom_mlp, "model.bottom_mlp")
    top = parse_mlp(m.top_mlp, "model.top_mlp")
    if len(bottom) < 2:
        raise ConfigError(
            f"model.bottom_mlp={m.bottom_mlp!r} needs an input width and at least one layer"
        )
    if bottom[0] != NUM_DENSE_FEATURES:
        raise ConfigError(
            f"model.bottom_mlp={m.bottom_mlp!r} starts with {bottom[0]}, but the data has "
            f"{NUM_DENSE_FEATURES} dense features: write '{NUM_DENSE_FEATURES}-...'"
        )
    if m.interaction in ("dot", "dcn") and bottom[-1] != m.embedding_dim:
        raise ConfigError(
            f"model.bottom_mlp={m.bottom_mlp!r} ends in {bottom[-1]}, but the {m.interaction} "
            f"interaction needs it to equal model.embedding_dim={m.embedding_dim}"
        )
    if top[-1] != 1:
        raise ConfigError(f"model.top_mlp={m.top_mlp!r} must end in 1 (one logit), not {top[-1]}")


def validate_for_launch(config: Config, world_size: int, device_type: str = "cpu") -> None:
    """Everything that can be checked before ``init_process_group``."""
    validate_model(config)
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
    if st != "data_parallel" and config.model.embedding_dim % FUSED_DIM_MULTIPLE:
        d = config.model.embedding_dim
        raise ConfigError(
            f"model.embedding_dim={d} cannot use fbgemm's fused kernel "
            f"(sharding type {st or 'chosen by the planner'}): it needs a multiple of "
            f"{FUSED_DIM_MULTIPLE}, e.g. {d - d % 4 or 4} or {d + 4 - d % 4}; "
            "or use --sharding-type data_parallel"
        )
    opt = config.optim.embedding_optimizer
    if device_type == "cpu" and st != "data_parallel" and opt not in CPU_FUSED_OPTIMIZERS:
        raise ConfigError(
            f"optim.embedding_optimizer={opt!r} has no fused CPU kernel in fbgemm (CPU supports "
            f"{', '.join(CPU_FUSED_OPTIMIZERS)}); use one of those, run on CUDA, or replicate "
            "the tables with --sharding-type data_parallel (then torch's optimizer is used)"
        )
