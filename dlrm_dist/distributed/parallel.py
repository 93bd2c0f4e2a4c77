"""Wraps the model for hybrid parallelism.

DistributedModelParallel shards the EmbeddingBagCollection by the plan (pooled outputs
are exchanged by all-to-all inside its forward) and wraps every remaining module — the
MLPs and the interaction — in DistributedDataParallel.
"""

from __future__ import annotations

from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan

from dlrm_dist.distributed.env import DistEnv


def shard_model(model: nn.Module, plan: ShardingPlan, env: DistEnv) -> DistributedModelParallel:
    """The model under DMP with ``plan`` on ``env.device`` (needs the process group)."""
    return DistributedModelParallel(
        module=model,
        device=env.device,
        plan=plan,
        sharders=[EmbeddingBagCollectionSharder()],
    )
