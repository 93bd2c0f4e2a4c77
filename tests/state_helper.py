"""Reading a model's or a checkpoint's full state for comparisons in tests (not package code).

``gather_full_state_dict`` is a collective over a sharded model; ``load_embedding_optimizer_state``
reads a checkpoint's embedding optimizer state without a process group, whatever the layout it
was saved from (per-column-shard row-wise state comes back as the whole row's accumulator).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from dlrm_dist.checkpoint import optim_state
from dlrm_dist.checkpoint.io import read_state, verified_metadata
from dlrm_dist.checkpoint.manifest import Manifest
from dlrm_dist.checkpoint.unsharded import find_checkpoint


def gather_full_state_dict(model: nn.Module, dst: int = 0) -> dict[str, torch.Tensor]:
    """Every weight as a full, unsharded CPU tensor on rank ``dst`` (empty dict elsewhere)."""
    rank = dist.get_rank()
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size(), dtype=value.dtype) if rank == dst else None
            value.gather(dst=dst, out=full, dtype=value.dtype)  # (default: float32, which rounds int64 buffers)
            if rank == dst:
                out[key] = full
        elif rank == dst and isinstance(value, torch.Tensor):
            out[key] = value.detach().cpu().clone()
    return out


def load_embedding_optimizer_state(path: str | Path) -> dict[str, torch.Tensor]:
    """``{'<table>.<state>': full tensor}``: the checkpoint's embedding optimizer state."""
    found = find_checkpoint(path)
    metadata = verified_metadata(found, Manifest.read(found))
    section = optim_state.SECTION + "."
    stored = {k[len(section):]: v for k, v in metadata.state_dict_metadata.items() if k.startswith(section)}
    state = {optim_state.SECTION: {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in stored.items()}}
    read_state(found, state, metadata)
    out = {}
    for key, value in state[optim_state.SECTION].items():
        if key.endswith(optim_state.PER_COLUMN):
            key = key[: -len(optim_state.PER_COLUMN)]
            value = optim_state.whole_rows(value, optim_state.saved_column_widths(metadata, key.split(".", 1)[0]))
        out[key] = value
    return out
