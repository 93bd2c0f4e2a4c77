"""Checkpoints: sharded (torch.distributed.checkpoint), atomic, resumable.

manifest.py (what a checkpoint holds, typed) <- store.py (where checkpoints live, publishing)
<- io.py (saving and loading a sharded state with DCP) <- manager.py (the run's policy:
when to save, what to keep, where to resume from); unsharded.py reads one without a
process group (export, tests). Managed tables: remappers.py saves what TorchRec's remappers keep
outside their state dict, managed.py loads them in place or resharded by raw id (id_reshard.py:
which id goes to which row of which shard). Every read goes through integrity.py (each file's CRC32C,
recorded at save, verified first) and reader.py (``.metadata`` unpickled from an
allow-list, checked): a checkpoint is data, never code.
"""

from dlrm_dist.checkpoint.io import discard_partial_writes, load_checkpoint, save_checkpoint
from dlrm_dist.checkpoint.manager import CheckpointManager, CheckpointPolicy
from dlrm_dist.checkpoint.manifest import CheckpointError, Manifest, RunInfo, schema_of
from dlrm_dist.checkpoint.store import latest_checkpoint

__all__ = ["CheckpointError", "CheckpointManager", "CheckpointPolicy", "Manifest", "RunInfo", "discard_partial_writes",
           "latest_checkpoint", "load_checkpoint", "save_checkpoint", "schema_of"]
