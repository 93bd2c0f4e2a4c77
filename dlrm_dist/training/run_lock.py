"""One writer per run directory and per checkpoint directory, for the whole of a training run.

Two trainings on one directory at once would interleave their metrics, overwrite each
other's config and mix checkpoint manifests; a starting run even clears "partial" checkpoint
writes that belong to a live one. So a run holds ``fileio.DirLock`` on every directory it
writes (``train.run_dir``; ``train.checkpoint_dir`` unless it only evaluates) from before the
process group starts until it ends.

Rank 0 takes the locks: it alone writes the run directory, and it publishes each checkpoint
(every rank writes DCP shards, but on a multi-node job the other hosts may not share its view
of a lock file). A refused rank 0 does not leave at once: the other ranks are on their way to
the process group's rendezvous and would wait there, up to its timeout, for a rank that never
comes. It joins the group, and ``agree()``, the run's first collective, tells every rank;
each raises the same DirectoryBusyError (exit 2) naming the holder's pid and host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist

from dlrm_dist.config.sections import Config
from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.fileio import DirectoryBusyError, DirLock


def written_directories(cfg: Config) -> list[tuple[Path, str]]:
    """(directory, what for) of every directory a training with ``cfg`` writes, each once."""
    wanted = [(cfg.train.run_dir, "dlrm-train train.run_dir")]
    if cfg.train.checkpoint_dir and not cfg.train.inference_only:
        wanted.append((cfg.train.checkpoint_dir, "dlrm-train train.checkpoint_dir"))
    out: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for directory, what in wanted:
        # One directory named twice (run_dir == checkpoint_dir) is one lock: a second flock
        # from this same process would refuse the process itself.
        resolved = Path(directory).resolve()
        if resolved not in seen:
            seen.add(resolved)
            out.append((Path(directory), what))
    return out


class RunLocks:
    """The locks of one run: taken by rank 0 in ``take``, agreed on by all ranks in ``agree``."""

    def __init__(self, env: DistEnv) -> None:
        self.env = env
        self.locks: list[DirLock] = []
        self.refusal: Optional[str] = None  # rank 0's DirectoryBusyError message, until agree()

    def take(self, cfg: Config) -> None:
        """Rank 0 locks every directory the run writes; a refusal is kept for ``agree``."""
        if not self.env.is_main:
            return
        for directory, what in written_directories(cfg):
            lock = DirLock(directory, what)
            try:
                lock.acquire()
            except DirectoryBusyError as busy:
                self.refusal = str(busy)
                self.release()
                return
            self.locks.append(lock)

    def agree(self) -> None:
        """Every rank learns whether rank 0 holds the locks (a collective once the group exists).

        Raises DirectoryBusyError on every rank when rank 0 was refused.
        """
        refusal = [self.refusal]
        if self.env.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(refusal, src=0)
        if refusal[0] is not None:
            self.release()
            raise DirectoryBusyError(refusal[0])

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()
        self.locks = []

    def __enter__(self) -> "RunLocks":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
