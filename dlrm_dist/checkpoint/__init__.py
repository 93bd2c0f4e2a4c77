"""Checkpoints: sharded (torch.distributed.checkpoint), atomic, resumable."""

from dlrm_dist.checkpoint.io import CheckpointError, discard_partial_writes, load_checkpoint, save_checkpoint
from dlrm_dist.checkpoint.store import latest_checkpoint

__all__ = ["CheckpointError", "discard_partial_writes", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]
