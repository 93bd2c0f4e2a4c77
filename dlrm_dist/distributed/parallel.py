"""Wraps the model for hybrid parallelism, and the options that change how it runs.

DistributedModelParallel shards the EmbeddingBagCollection by the plan (pooled outputs
are exchanged by all-to-all inside its forward) and wraps every remaining module — the
MLPs and the interaction — in DistributedDataParallel.

Managed tables (kind managed) live in a ManagedCollisionEmbeddingBagCollection beside the
plain collection: TorchRec shards it (remappers and tables) row-wise only, each rank's
remapper owning the raw ids of its block of the id space and the rows of its shard. A plan
names every table under the plain collection's path; ``split_plan`` moves the managed ones
to the managed collection's path.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import torch
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.mc_embeddingbag import ManagedCollisionEmbeddingBagCollectionSharder
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ModuleSharder, ShardingType
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs_registry
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.train_pipeline import PrefetchTrainPipelineSparseDist, TrainPipelineSparseDist
from torchrec.distributed.types import ShardingPlan

from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.errors import DlrmError, EXIT_BAD_INPUT

_COMM_TYPES = {"fp16": CommType.FP16, "bf16": CommType.BF16}


def sharder(qcomms: str = "none") -> EmbeddingBagCollectionSharder:
    """TorchRec's sharder, with quantized all-to-all (forward and backward) when asked.

    The same sharder must plan and shard: TorchRec's planner counts the smaller messages.
    """
    if qcomms == "none":
        return EmbeddingBagCollectionSharder()
    config = QCommsConfig(forward_precision=_COMM_TYPES[qcomms], backward_precision=_COMM_TYPES[qcomms])
    return EmbeddingBagCollectionSharder(qcomm_codecs_registry=get_qcomm_codecs_registry(config))


def sharders(qcomms: str = "none") -> list[ModuleSharder[nn.Module]]:
    """The plain collection's sharder and the managed collection's (which shards its tables with
    the same EBC sharder: the same quantized all-to-all)."""
    ebc = sharder(qcomms)
    return [ebc, ManagedCollisionEmbeddingBagCollectionSharder(ebc_sharder=ebc)]


class ManagedPlanError(DlrmError):
    """A plan shards a managed table otherwise than row-wise (TorchRec shards remappers row-wise only)."""

    exit_code = EXIT_BAD_INPUT


def managed_paths(model: nn.Module) -> dict[str, list[str]]:
    """``{module path: its tables}`` of every managed collection in ``model``."""
    return {path: [c.name for c in m._embedding_module.embedding_bag_configs()]
            for path, m in model.named_modules() if isinstance(m, ManagedCollisionEmbeddingBagCollection)}


def split_plan(plan: ShardingPlan, model: nn.Module) -> ShardingPlan:
    """``plan`` with each managed table's entry under its managed collection's path; a managed
    table planned otherwise than row-wise is an error naming it (plan it with row_wise)."""
    owner = {table: path for path, tables in managed_paths(model).items() for table in tables}
    if not owner:
        return plan
    out: dict[str, EmbeddingModuleShardingPlan] = {}
    wrong = []
    for path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():
            target = owner.get(table, path)
            if table in owner and ps.sharding_type != ShardingType.ROW_WISE.value:
                wrong.append(f"{table} ({ps.sharding_type})")
            if table in owner and ps.compute_kernel == EmbeddingComputeKernel.DENSE.value:
                # The sharded managed collection rewrites evicted rows (and row-wise Adagrad's state)
                # through fbgemm's fused kernel; the dense kernel (row-wise on CPU) has no such call.
                ps = dataclasses.replace(ps, compute_kernel=EmbeddingComputeKernel.FUSED.value)
            out.setdefault(target, EmbeddingModuleShardingPlan())[table] = ps
    if wrong:
        raise ManagedPlanError(f"managed table(s) {', '.join(wrong)}: TorchRec shards a managed table (its remapper "
                               "and rows) row-wise only; plan them row_wise (e.g. --sharding.sharding_type=row_wise)")
    return ShardingPlan(out)


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
        plan=split_plan(plan, model),
        sharders=sharders(qcomms),
    )
