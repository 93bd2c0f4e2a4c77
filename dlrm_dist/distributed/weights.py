"""Reading and writing the weights of a sharded model as if it were unsharded.

Embedding weights appear in a DMP state dict as ShardedTensors (each rank holds the local
shards, views onto the fused kernel's storage) or, for data-parallel tables, as plain
replicated tensors. These helpers address them by table and global row/column offsets.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from dlrm_dist.model.init import fill_rows
from dlrm_dist.names import EMBEDDING_KEY

def table_of(key: str) -> Optional[str]:
    """``'...embedding_bags.t_cat_3.weight'`` -> ``'t_cat_3'``; None for non-embedding keys."""
    if EMBEDDING_KEY not in key or not key.endswith(".weight"):
        return None
    return key.split(EMBEDDING_KEY, 1)[1][: -len(".weight")]


@torch.no_grad()
def init_embedding_weights(model: nn.Module, table_sizes: dict[str, int], seed: int) -> None:
    """Writes plan-independent initial weights into every local shard (see model/init.py)."""
    index = {name: i for i, name in enumerate(table_sizes)}
    for key, value in model.state_dict().items():
        table = table_of(key)
        if table is None:
            continue
        rows, dim = table_sizes[table], value.shape[1]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                r0, c0 = shard.metadata.shard_offsets
                fill_rows(shard.tensor, seed, index[table], rows, dim, r0, c0)
        else:
            fill_rows(value, seed, index[table], rows, dim, 0, 0)
