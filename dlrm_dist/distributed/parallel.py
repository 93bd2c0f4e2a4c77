"""Wraps the model for hybrid parallelism, and the options that change how it runs.

DistributedModelParallel shards the EmbeddingBagCollection by the plan (pooled outputs
are exchanged by all-to-all inside its forward) and wraps every remaining module — the
MLPs and the interaction — in DistributedDataParallel.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs_registry
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan

from dlrm_dist.distributed.env import DistEnv

_COMM_TYPES = {"fp16": CommType.FP16, "bf16": CommType.BF16}


def sharder(qcomms: str = "none") -> EmbeddingBagCollectionSharder:
    """TorchRec's sharder, with quantized all-to-all (forward and backward) when asked.

    The same sharder must plan and shard: TorchRec's planner counts the smaller messages.
    """
    if qcomms == "none":
        return EmbeddingBagCollectionSharder()
    config = QCommsConfig(forward_precision=_COMM_TYPES[qcomms], backward_precision=_COMM_TYPES[qcomms])
    return EmbeddingBagCollectionSharder(qcomm_codecs_registry=get_qcomm_codecs_registry(config))


def set_matmul_precision(tf32: bool, device: torch.device) -> None:
    """TF32 for CUDA matrix multiplies (TorchRec's DLRM example sets both flags)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def compile_dense(model: nn.Module) -> None:
    """The dense part (bottom MLP, interaction, residual units, top MLP) under torch.compile.

    Each module is compiled in place before DMP wraps them in DDP; the embedding collection is
    left alone (its sharded lookups are TorchRec's and fbgemm's own kernels).
    """
    dlrm = model.model
    for name in ("dense_arch", "interaction", "residual_arch", "over_arch"):
        module: Optional[nn.Module] = getattr(dlrm, name, None)
        if module is not None:
            module.compile()


def shard_model(model: nn.Module, plan: ShardingPlan, env: DistEnv, qcomms: str = "none") -> DistributedModelParallel:
    """The model under DMP with ``plan`` on ``env.device`` (needs the process group)."""
    return DistributedModelParallel(
        module=model,
        device=env.device,
        plan=plan,
        sharders=[sharder(qcomms)],
    )
