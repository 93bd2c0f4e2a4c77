"""Saving and loading a sharded training state with torch.distributed.checkpoint (DCP).

A checkpoint holds the model's state dict (sharded embedding tables as ShardedTensors,
dense weights), the embedding optimizer's state in a layout-independent form
(optim_state.py), the dense optimizer's state, the step — which is also the data position,
since both data sources are addressed by global batch index, and fixes the LR schedule —
the torch RNG state, and a manifest with the tables, optimizers, plan and config the run
used. DCP reshards tensors whose key and global shape agree, so weights and optimizer
state load at another world size or under another plan.

DCP reports failures as CheckpointException, which derives from BaseException: it is
caught here on purpose and turned into a CheckpointError that names what is missing.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata

from dlrm_dist.checkpoint import optim_state, store
from dlrm_dist.checkpoint.manifest import CheckpointError, Manifest, RunInfo
from dlrm_dist.distributed.weights import table_of
from dlrm_dist.optimizers import DENSE


def _tables(model_state: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """{table: (rows, dim)} from a model state dict."""
    return {table: tuple(value.shape) for key, value in model_state.items() if (table := table_of(key))}


def _state(model: nn.Module, step: int) -> dict[str, Any]:
    return {"model": model.state_dict(), "train": {"step": torch.tensor(step), "torch_rng": torch.get_rng_state()}}


def _has_leaves(tree: Any) -> bool:
    """Whether a nested dict/list holds any value (DCP drops empty containers when saving)."""
    if isinstance(tree, dict):
        return any(_has_leaves(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return any(_has_leaves(v) for v in tree)
    return True


def _dense_optimizer(optimizer: Any) -> Any:
    return dict(optimizer.optimizers)[DENSE]


def save_checkpoint(root: str | Path, step: int, model: nn.Module, optimizer: Any,
                    info: RunInfo, keep_last: int = 3) -> Path:
    """Writes and publishes checkpoint ``step`` (a collective: every rank calls it).

    ``optimizer`` is the training's CombinedOptimizer; ``info.embedding_optimizer`` names
    the embedding optimizer (its state names).
    """
    root = Path(root)
    tmp = store.tmp_dir(root, step)
    state = _state(model, step)
    state[optim_state.SECTION] = optim_state.save_view(optim_state.slots(optimizer, info.embedding_optimizer))
    state["optim"] = _dense_optimizer(optimizer).state_dict()
    dcp.save(state, checkpoint_id=str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        store.publish(root, Manifest(step, dist.get_world_size(), _tables(state["model"]), info), keep_last)
    dist.barrier()
    return store.step_dir(root, step)


def discard_partial_writes(root: str | Path) -> list[tuple[Path, Optional[str]]]:
    """Removes checkpoints a killed job left half-written in ``root`` (a collective, at start-up).

    Returns (path, None) for each one removed and (path, the error) for each that could not be
    (on rank 0; other ranks get an empty list).

    Writing into such a directory could mix old files with new ones (or block on whatever a
    dead writer left there); nothing reads it, since it was never published.
    """
    found = store.partial_writes(Path(root))
    outcome: list[tuple[Path, Optional[str]]] = []
    if dist.get_rank() == 0:
        for path in found:
            try:
                shutil.rmtree(path)
                outcome.append((path, None))
            except OSError as e:  # say so rather than claim it is gone
                outcome.append((path, f"{type(e).__name__}: {e}"))
    dist.barrier()
    return outcome


def _check_manifest(path: Path, model_state: dict[str, Any], info: Optional[RunInfo]) -> Manifest:
    """The checkpoint's manifest, if it fits this model (and, given ``info``, this run's optimizers)."""
    manifest = Manifest.read(path)
    ours, theirs = _tables(model_state), manifest.tables
    problems = [f"table {t} is in the model but not in the checkpoint" for t in ours if t not in theirs]
    problems += [f"table {t} is in the checkpoint but not in the model" for t in theirs if t not in ours]
    problems += [f"table {t}: checkpoint {theirs[t][0]} x {theirs[t][1]}, model {ours[t][0]} x {ours[t][1]}"
                 for t in ours if t in theirs and theirs[t] != ours[t]]
    if info is not None:
        problems += info.differences(manifest.info)
    if problems:
        raise CheckpointError(f"{path} is from a different model:\n" + "\n".join(f"  - {p}" for p in problems))
    return manifest


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: Optional[Any], info: RunInfo) -> int:
    """Loads a checkpoint (in place, resharding as needed) and returns its step.

    ``optimizer=None`` loads the weights only (then the optimizers need not match).
    """
    path = Path(path)
    state = _state(model, 0)
    manifest = _check_manifest(path, state["model"], info if optimizer is not None else None)
    finish: Callable[[], None] = lambda: None
    if optimizer is not None:
        slots = optim_state.slots(optimizer, info.embedding_optimizer)
        request, finish, missing = optim_state.load_view(slots, read_metadata(path))
        missing = _on_any_rank(missing)  # every rank raises, or none: a lone raise would hang the rest
        if missing:
            raise CheckpointError(f"{path} has no embedding optimizer state for:\n" + "\n".join(f"  - {m}" for m in missing))
        # SGD keeps no state, and DCP saves an empty section as nothing: asking for it on load
        # would be a missing key.
        if request:
            state[optim_state.SECTION] = request
        dense = _dense_optimizer(optimizer).state_dict()
        if _has_leaves(dense):
            state["optim"] = dense
    try:
        dcp.load(state, checkpoint_id=str(path))
    except CheckpointException as e:  # a BaseException: caught deliberately
        raise CheckpointError(f"{path}: the checkpoint could not be read completely: {failures_text(e)}") from None
    model.load_state_dict(state["model"])
    step = int(state["train"]["step"])
    if step != manifest.step:
        raise CheckpointError(f"{path}: manifest says step {manifest.step}, data says {step}")
    finish()
    if optimizer is not None:
        if "optim" in state:
            _dense_optimizer(optimizer).load_state_dict(state["optim"])
        optim_state.set_replicated_steps(optimizer, step)
    torch.set_rng_state(state["train"]["torch_rng"])
    return step


def _on_any_rank(items: list[str]) -> list[str]:
    if not (dist.is_available() and dist.is_initialized()):
        return items
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return sorted({item for part in gathered for item in part})


def read_metadata(path: Path) -> Metadata:
    try:
        return dcp.FileSystemReader(str(path)).read_metadata()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: no readable DCP metadata ({type(e).__name__}: {e})") from None


VERBOSE_ENV = "DLRM_DIST_VERBOSE"  # set to 1: checkpoint errors carry each rank's stack trace


def failures_text(e: CheckpointException) -> str:
    """One line per failing rank (DCP wraps each error with its stack: that goes only in verbose)."""
    failures = getattr(e, "failures", {}) or {}
    parts = []
    for rank, wrapped in sorted(failures.items()):
        exc, stack = wrapped if isinstance(wrapped, tuple) else (wrapped, None)
        line = f"rank {rank}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if stack is not None and os.environ.get(VERBOSE_ENV) == "1":
            line += "\n" + "".join(stack.format())
        parts.append(line)
    if not parts:
        return str(e).splitlines()[0][:500]
    return "; ".join(parts) + ("" if os.environ.get(VERBOSE_ENV) == "1" else f" ({VERBOSE_ENV}=1 for the stack traces)")
