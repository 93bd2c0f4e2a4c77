"""The checkpointing policy of a training run, in one object (as torchtitan's CheckpointManager).

The policy (``CheckpointPolicy``, from ``[train]``): where checkpoints go, how often one is
due, how many are kept, whether a run resumes from the newest one, and which checkpoint a
run starts from. ``CheckpointManager`` applies it: it says at which steps a save is due,
saves (publishing atomically and purging old ones), and restores at start-up (after
clearing what a killed job left half-written). The trainer only asks it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from dlrm_dist.checkpoint.io import discard_partial_writes, load_checkpoint, save_checkpoint
from dlrm_dist.checkpoint.manifest import CheckpointError, RunInfo
from dlrm_dist.checkpoint.store import latest_checkpoint
from dlrm_dist.config.sections import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointPolicy:
    """When and where to save, what to keep, where to start from."""

    directory: Optional[str] = None  # None: no checkpoints are written
    interval: int = 0  # a save every N steps (0: only at the end)
    keep_last: int = 3  # 0: keep all
    resume: bool = True  # start from the newest checkpoint in ``directory``, if any
    load_from: Optional[str] = None  # start from this checkpoint (or the newest in this directory)

    @classmethod
    def from_config(cls, train: TrainConfig) -> "CheckpointPolicy":
        """From a ``TrainConfig`` (its checkpoint_dir, checkpoint_interval, keep_last, resume, checkpoint)."""
        return cls(train.checkpoint_dir, train.checkpoint_interval, train.keep_last, train.resume, train.checkpoint)


class CheckpointManager:
    """Saves when due, keeps the last few, and restores a run (every method is a collective)."""

    def __init__(self, policy: CheckpointPolicy, model: nn.Module, optimizer: Any, info: RunInfo) -> None:
        self.policy, self.model, self.optimizer, self.info = policy, model, optimizer, info

    def due_steps(self, total_steps: int) -> list[int]:
        """The steps (up to and including ``total_steps``) after which a checkpoint is written."""
        p = self.policy
        if not p.directory:
            return []
        return sorted(set(range(p.interval, total_steps, p.interval) if p.interval else []) | {total_steps})

    def save(self, step: int) -> Path:
        """Writes and publishes checkpoint ``step``, then purges all but the last ``keep_last``."""
        if not self.policy.directory:
            raise CheckpointError("no checkpoint directory is configured (train.checkpoint_dir)")
        path = save_checkpoint(self.policy.directory, step, self.model, self.optimizer, self.info,
                               keep_last=self.policy.keep_last)
        logger.info("checkpoint @ step %d: %s", step, path)
        return path

    def restore(self, weights_only: bool = False) -> Optional[int]:
        """Loads ``load_from``, or resumes from the newest checkpoint; returns its step.

        None when nothing was loaded (nothing to resume from). With ``weights_only``
        (evaluating a checkpoint) the optimizers are left alone.
        """
        p = self.policy
        if p.directory and not weights_only:
            self._discard_partial_writes(p.directory)
        source = p.load_from or (p.directory if p.resume else None)
        path = latest_checkpoint(source) if source else None
        if p.load_from and path is None:
            raise CheckpointError(f"no complete checkpoint at {p.load_from}")
        if path is None:
            return None
        step = load_checkpoint(path, self.model, None if weights_only else self.optimizer, self.info)
        logger.info("loaded %s (step %d%s)", path, step, ", weights only" if weights_only else "")
        return step

    def newest(self) -> Optional[Path]:
        """The newest complete checkpoint written by this policy, if any."""
        return latest_checkpoint(self.policy.directory) if self.policy.directory else None

    @staticmethod
    def _discard_partial_writes(directory: str) -> None:
        for path, error in discard_partial_writes(directory):
            if error is None:
                logger.info("removed %s: a checkpoint a killed job did not finish", path)
            else:
                logger.warning("could not remove %s, a checkpoint a killed job did not finish (%s); "
                               "remove it by hand", path, error)
