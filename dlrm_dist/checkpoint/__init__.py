"""Checkpoints: sharded (torch.distributed.checkpoint), atomic, resumable."""

from dlrm_dist.checkpoint.io import CheckpointError, load_checkpoint, save_checkpoint
from dlrm_dist.checkpoint.store import latest_checkpoint

__all__ = ["CheckpointError", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]
