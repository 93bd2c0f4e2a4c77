"""A sharded checkpoint read into a plain, unsharded, single-process model (no process group).

DCP reads every shard and reassembles full tensors into the model built from the
checkpoint's own config (its manifest carries the resolved config, schema included).
Used by serving/export.py and by tests that compare weights across layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from dlrm_dist.checkpoint.io import failures_text
from dlrm_dist.checkpoint.manifest import CheckpointError, Manifest
from dlrm_dist.checkpoint.store import latest_checkpoint
from dlrm_dist.config.loader import config_from_dict
from dlrm_dist.config.schema import Config
from dlrm_dist.model import DLRMTrain, build_model
from dlrm_dist.model.spec import resolved_spec


@dataclass
class Unsharded:
    """A checkpoint's model (CPU, eval mode, full tables), the config it was trained with, its step."""

    model: DLRMTrain
    config: Config
    step: int
    path: Path


def find_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a checkpoint, else the newest complete one in it."""
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no complete checkpoint at {path}")
    return found


def read_state(found: Path, state: dict) -> None:
    """``dcp.load`` without a process group, its failures turned into a CheckpointError."""
    try:
        dcp.load(state, checkpoint_id=str(found), no_dist=True)
    except CheckpointException as e:  # a BaseException: caught deliberately
        raise CheckpointError(f"{found}: the checkpoint could not be read completely: {failures_text(e)}") from None


def read_unsharded(path: str | Path) -> Unsharded:
    """The checkpoint at ``path`` (or the newest in it) as an :class:`Unsharded`."""
    found = find_checkpoint(path)
    manifest = Manifest.read(found)
    cfg = config_from_dict(manifest.info.config, f"{found} manifest")
    model = build_model(resolved_spec(cfg), seed=0, device=torch.device("cpu"))
    state = {"model": model.state_dict()}
    read_state(found, state)
    model.load_state_dict(state["model"])
    return Unsharded(model.eval(), cfg, manifest.step, found)


def load_unsharded(path: str | Path) -> DLRMTrain:
    """The checkpoint's model as a plain CPU module (full tables), in eval mode."""
    return read_unsharded(path).model
