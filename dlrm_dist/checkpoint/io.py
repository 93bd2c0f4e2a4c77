"""Saving and loading a sharded training state with torch.distributed.checkpoint (DCP).

A checkpoint holds the model's state dict (sharded embedding tables as ShardedTensors,
dense weights), the embedding optimizer's state in a layout-independent form
(optim_state.py), the dense optimizer's state, the step — which is also the data position,
since both data sources are addressed by global batch index, and fixes the LR schedule —
the torch RNG state, and a manifest with the tables, optimizers, plan, config and schema the
run used and every file's CRC32C. DCP reshards tensors whose key and global shape agree, so
weights and optimizer state load at another world size or under another plan.

A checkpoint is data, never code: every value saved is a tensor (DCP pickles anything else
as a byte item, which it loads with a full unpickler), and loading reads ``.metadata``
through reader.py's allow-list unpickler after integrity.py has verified every file against
the manifest, on every rank, before DCP opens one.

DCP reports failures as CheckpointException, which derives from BaseException: it is
caught here on purpose and turned into a CheckpointError that names what is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata

from dlrm_dist.errors import refusal_text
from dlrm_dist.checkpoint import integrity, optim_state, reader, remappers, store
from dlrm_dist.checkpoint.managed import ManagedLoad
from dlrm_dist.checkpoint.manifest import BestMark, CheckpointError, FileSum, Manifest, RunInfo, schema_changes
from dlrm_dist.distributed.weights import table_of
from dlrm_dist.optimizer_registry import DENSE

logger = logging.getLogger(__name__)


def tables_of(model_state: dict[str, Any]) -> dict[str, tuple[int, int]]:
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


def non_tensor_keys(tree: Any, prefix: str = "") -> list[str]:
    """Keys of leaves that are not tensors (DCP would pickle them as byte items)."""
    if isinstance(tree, dict):
        return [k for key, v in tree.items() for k in non_tensor_keys(v, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [k for i, v in enumerate(tree) for k in non_tensor_keys(v, f"{prefix}{i}.")]
    return [] if isinstance(tree, torch.Tensor) else [prefix.rstrip(".")]


def _on_every_rank(items: list[Any]) -> list[list[Any]]:
    """Every rank's ``items`` (just this one's without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [items]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return gathered


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _checksum_files(directory: Path) -> dict[str, FileSum]:
    """Every file's checksum, each rank computing its share (a collective; see integrity.py)."""
    rank, world = _rank_and_world()
    try:
        names = integrity.listed(directory)
        sums, problems = integrity.checksums(directory, integrity.share(names, rank, world))
    except OSError as e:
        sums, problems = {}, [f"{directory}: cannot be listed ({type(e).__name__}: {e.strerror or e})"]
    parts = _on_every_rank([sums, problems])
    problems = sorted({p for _, part in parts for p in part})
    if problems:  # every rank raises alike: the checkpoint stays unpublished
        raise CheckpointError(f"checkpoint {directory} could not be checksummed:\n" + "\n".join(f"  - {p}" for p in problems))
    return {name: s for part, _ in parts for name, s in part.items()}


def verified_metadata(path: Path, manifest: Manifest) -> Metadata:
    """Verifies the checkpoint's files against ``manifest``, then reads its metadata (a collective).

    Each rank checks its share of the files' CRC32Cs; the problems found anywhere are raised
    on every rank alike (a lone raise would leave the others waiting), naming each file.
    """
    rank, world = _rank_and_world()
    problems: list[str] = []
    if manifest.files is None:
        logger.warning("%s has a v2 manifest, written before checksums: its files are not verified", path)
    else:
        problems = integrity.file_set_problems(path, manifest.files)
        problems += integrity.verify(path, manifest.files, integrity.share(manifest.files, rank, world))
    metadata, refused = None, None
    if not problems:
        try:
            metadata = reader.read_metadata(path, manifest.files)
        except CheckpointError as e:
            refused = str(e)
    parts = _on_every_rank([problems, refused])
    integrity.raise_problems(path, [p for found, _ in parts for p in found])
    refusals = sorted({r for _, r in parts if r})
    if refusals:
        raise CheckpointError(refusals[0])
    return metadata


def save_checkpoint(root: str | Path, step: int, model: nn.Module, optimizer: Any,
                    info: RunInfo, keep_last: int = 3, best: Optional[BestMark] = None) -> Path:
    """Writes and publishes checkpoint ``step`` (a collective: every rank calls it).

    ``optimizer`` is the training's CombinedOptimizer; ``info.embedding_optimizer`` names
    the embedding optimizer (its state names). ``best`` (early stopping) goes in the
    manifest, and its step's checkpoint survives the pruning.
    """
    root = Path(root)
    tmp = store.tmp_dir(root, step)
    state = _state(model, step)
    state[optim_state.SECTION] = optim_state.save_view(optim_state.slots(optimizer, info.embedding_optimizer,
                                                                         state["model"]))
    state["optim"] = _dense_optimizer(optimizer).state_dict()
    managed = remappers.save_view(model, _on_every_rank)  # what the remappers counted since their last admission
    if managed:
        state[remappers.SECTION] = managed
    pickled = non_tensor_keys(state)  # the same on every rank: the state's structure is the model's
    if pickled:
        raise CheckpointError("refusing to save values that are not tensors (DCP would store them as pickles, "
                              "which a reader would have to unpickle in full): " + ", ".join(pickled))
    dcp.save(state, checkpoint_id=str(tmp))
    dist.barrier()  # every rank's files are closed: they are checksummed now
    files = _checksum_files(tmp)
    if dist.get_rank() == 0:
        manifest = Manifest(step, dist.get_world_size(), tables_of(state["model"]), info, files, best=best)
        store.publish(root, manifest, keep_last)
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


def table_problems(ours: dict[str, tuple[int, int]], theirs: dict[str, tuple[int, int]]) -> list[str]:
    """How a model's tables (``ours``) differ from a checkpoint's (``theirs``)."""
    problems = [f"table {t} is in the model but not in the checkpoint" for t in ours if t not in theirs]
    problems += [f"table {t} is in the checkpoint but not in the model" for t in theirs if t not in ours]
    problems += [f"table {t}: checkpoint {theirs[t][0]} x {theirs[t][1]}, model {ours[t][0]} x {ours[t][1]}"
                 for t in ours if t in theirs and theirs[t] != ours[t]]
    return problems


def schema_problems(manifest: Manifest, info: RunInfo, origin: str) -> list[str]:
    """How this run's data schema differs from the one the checkpoint was trained on."""
    saved, ours = manifest.info.schema(origin), info.schema("this run")
    if saved is None or ours is None:
        return []
    return [f"feature schema: {change} (checkpoint -> this run's data)" for change in schema_changes(saved, ours)]


def _check_manifest(path: Path, model_state: dict[str, Any], info: RunInfo, optimizers: bool) -> Manifest:
    """The checkpoint's manifest, if it fits this model and data (and, with ``optimizers``, this run's optimizers)."""
    manifest = Manifest.read(path)
    problems = table_problems(tables_of(model_state), manifest.tables) + schema_problems(manifest, info, str(path))
    if optimizers:
        problems += info.differences(manifest.info)
    if problems:
        raise CheckpointError(f"{path} is from a different model or data:\n" + "\n".join(f"  - {p}" for p in problems))
    return manifest


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: Optional[Any], info: RunInfo) -> int:
    """Loads a checkpoint (in place, resharding as needed) and returns its step.

    ``optimizer=None`` loads the weights only (then the optimizers need not match).
    """
    path = Path(path)
    state = _state(model, 0)
    manifest = _check_manifest(path, state["model"], info, optimizers=optimizer is not None)
    metadata = verified_metadata(path, manifest)
    finish: Callable[[], None] = lambda: None
    managed = ManagedLoad(path, state["model"], model, metadata, _rank_and_world()[0], _on_every_rank)
    request_state = {**state, "model": managed.model_request()}
    if managed.pending_request:
        request_state[remappers.SECTION] = managed.pending_request
    slots: list[optim_state.Slot] = []
    if optimizer is not None:
        slots = optim_state.slots(optimizer, info.embedding_optimizer, state["model"])
        request, finish, missing = optim_state.load_view(slots, metadata)
        missing = _on_any_rank(missing)  # every rank raises, or none: a lone raise would hang the rest
        if missing:
            raise CheckpointError(f"{path} has no embedding optimizer state for:\n" + "\n".join(f"  - {m}" for m in missing))
        # SGD keeps no state, and DCP saves an empty section as nothing: asking for it on load
        # would be a missing key.
        managed.redirect_optimizer(request)
        if request:
            request_state[optim_state.SECTION] = request
        dense = _dense_optimizer(optimizer).state_dict()
        if _has_leaves(dense):
            request_state["optim"] = state["optim"] = dense
    read_state(path, request_state, metadata)
    model.load_state_dict(state["model"])  # (a resharded managed table's tensors: written by managed.finish)
    step = int(state["train"]["step"])
    if step != manifest.step:
        raise CheckpointError(f"{path}: manifest says step {manifest.step}, data says {step}")
    finish()
    managed.finish(slots)
    if optimizer is not None:
        if "optim" in state:
            _dense_optimizer(optimizer).load_state_dict(state["optim"])
        optim_state.set_replicated_steps(optimizer, step)
    torch.set_rng_state(state["train"]["torch_rng"])
    return step


def _on_any_rank(items: list[str]) -> list[str]:
    return sorted({item for part in _on_every_rank(items) for item in part})


def read_state(path: Path, state: dict[str, Any], metadata: Metadata) -> None:
    """``dcp.load`` of ``state`` through the safe reader (with or without a process group).

    ``metadata`` is what :func:`verified_metadata` returned: DCP gets it from the reader and
    never unpickles ``.metadata`` itself.
    """
    no_dist = not (dist.is_available() and dist.is_initialized())
    try:
        dcp.load(state, storage_reader=reader.SafeFileSystemReader(path, metadata), no_dist=no_dist)
    except CheckpointException as e:  # a BaseException: caught deliberately
        raise CheckpointError(f"{path}: the checkpoint could not be read completely: {failures_text(e)}") from None


VERBOSE_ENV = "DLRM_DIST_VERBOSE"  # set to 1: checkpoint errors carry each rank's stack trace


def failures_text(e: CheckpointException) -> str:
    """One line per failing rank (DCP wraps each error with its stack: that goes only in verbose)."""
    failures = getattr(e, "failures", {}) or {}
    parts = []
    for rank, wrapped in sorted(failures.items()):
        exc, stack = wrapped if isinstance(wrapped, tuple) else (wrapped, None)
        line = f"rank {rank}: {refusal_text(exc)}"
        if stack is not None and os.environ.get(VERBOSE_ENV) == "1":
            line += "\n" + "".join(stack.format())
        parts.append(line)
    if not parts:
        return str(e).splitlines()[0][:500]
    return "; ".join(parts) + ("" if os.environ.get(VERBOSE_ENV) == "1" else f" ({VERBOSE_ENV}=1 for the stack traces)")
