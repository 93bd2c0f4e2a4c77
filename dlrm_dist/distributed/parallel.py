"""Wraps the model for hybrid parallelism, and the options that change how it runs.

DistributedModelParallel shards the EmbeddingBagCollection by the plan (pooled outputs
are exchanged by all-to-all inside its forward) and wraps every remaining module — the
MLPs and the interaction — in DistributedDataParallel.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs_registry
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.train_pipeline import PrefetchTrainPipelineSparseDist, TrainPipelineSparseDist
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
    """TF32 for CUDA matrix multiplies and convolutions, through torch's fp32_precision API.

    torch 2.13 raises when the legacy ``allow_tf32`` flags and the new API are mixed in one
    process (and torch.compile's inductor reads the new one), so only the new API is used.
    """
    if device.type == "cuda":
        precision = "tf32" if tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision


def uses_cache(plan: ShardingPlan) -> bool:
    """True if any table of ``plan`` is a UVM-cached one (rows cached in HBM, the rest in host memory)."""
    return any(ps.compute_kernel == EmbeddingComputeKernel.FUSED_UVM_CACHING.value
               for module_plan in plan.plan.values() for ps in module_plan.values())


def train_pipeline(model: DistributedModelParallel, optimizer: torch.optim.Optimizer,
                   device: torch.device) -> TrainPipelineSparseDist:
    """TorchRec's pipeline for this model: with UVM-cached tables on CUDA the one that also
    prefetches the next batch's cache rows on a stream of its own (TorchRec's recommendation
    for cached tables), else the sparse-dist pipeline (input all-to-all one batch ahead)."""
    if device.type == "cuda" and uses_cache(model.plan):
        return PrefetchTrainPipelineSparseDist(model, optimizer, device, execute_all_batches=True)
    return TrainPipelineSparseDist(model, optimizer, device, execute_all_batches=True)


def restore_optimizer_step(model: nn.Module, step: int) -> None:
    """Sets fbgemm's step counter of every fused optimizer to ``step`` (after a resume).

    fbgemm keeps Adam's (and LAMB's) bias-correction step in the kernel buffer ``iter``, which
    neither TorchRec's optimizer state dict nor the module state dict holds: without this a
    resumed run restarts bias correction at step 1 (TorchRec's ``set_optimizer_step``).
    """
    fused = getattr(model, "fused_optimizer", None)
    if fused is not None and hasattr(fused, "set_optimizer_step"):
        fused.set_optimizer_step(step)


class HasDenseModules(Protocol):
    """A model that says which of its submodules are data-parallel (dlrm_dist.model.DLRMTrain does)."""

    def dense_modules(self) -> Sequence[nn.Module]: ...


def compile_dense(model: HasDenseModules) -> None:
    """The model's data-parallel part under torch.compile.

    Each module is compiled in place before DMP wraps them in DDP; the embedding collection is
    left alone (its sharded lookups are TorchRec's and fbgemm's own kernels).
    """
    for module in model.dense_modules():
        module.compile()


def shard_model(model: nn.Module, plan: ShardingPlan, env: DistEnv, qcomms: str = "none") -> DistributedModelParallel:
    """The model under DMP with ``plan`` on ``env.device`` (needs the process group)."""
    return DistributedModelParallel(
        module=model,
        device=env.device,
        plan=plan,
        sharders=[sharder(qcomms)],
    )
