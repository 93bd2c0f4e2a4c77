"""The managed tables' remappers in a checkpoint: what TorchRec's state dict leaves out.

A managed table's remapper (TorchRec's ``MCHManagedCollisionModule``, one per table on each
rank, for that rank's block of the id space) puts its admitted ids, their rows and their counts
(LFU) or last access (LRU) in the state dict, as ShardedTensors. What it has counted since its
last admission it keeps in plain attributes: the raw ids seen (``_history_accumulator`` up to
``_current_history_buffer_offset``), their access iterations for LRU (``_history_<name>``), the
history buffer's size (sized at the first batch), the iteration of the last admission
(``_last_eviction_iter``) and its own iteration (``_current_iter``). Without them a resumed
remapper forgets the ids it was counting and restarts its interval at the resumed step, so a
run resumes bit for bit only at an eviction boundary. This module saves them, as tensors (a
checkpoint is data), one row per rank:

    managed.<table>.pending_ids                (ranks, width) int64: ids counted since the last admission
    managed.<table>.pending_<name>             (ranks, width) int64: their history metadata (LRU's
                                               ``last_access_iter``), when the policy keeps any
    managed.<table>.clock                      (ranks, 4) int64: pending, history capacity (-1: not sized
                                               yet), last admission, iteration (-1: never ran)

and restores them into the live remappers, checked first: every value is range-checked and a
problem names the table, the rank and the value. Rows are padded to the widest rank's
pending count; every rank reads the whole (small) tensors, so a checkpoint loads at any world
size (remap.py routes the pending ids of a resharded table to their new ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardedTensorMetadata
from torch.distributed._shard.sharded_tensor.metadata import TensorProperties
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torchrec.modules.mc_modules import MCHManagedCollisionModule

from dlrm_dist.features.schema import MANAGED_ID_SPACE

SECTION = "managed"
CLOCK_FIELDS = ("pending", "capacity", "last_admission", "iteration")
Gather = Callable[[Any], list[Any]]  # every rank's value (io._on_every_rank)


@dataclass(frozen=True)
class Clock:
    """One rank's remapper counters (CLOCK_FIELDS)."""

    pending: int  # ids counted since the last admission
    capacity: int  # the history buffer's size (-1: not sized yet, no batch seen)
    last_admission: int  # iteration of the last admission (TorchRec's _last_eviction_iter)
    iteration: int  # the remapper's own iteration (-1: it never ran in this process)

    def tensor(self) -> torch.Tensor:
        return torch.tensor([self.pending, self.capacity, self.last_admission, self.iteration], dtype=torch.int64)

    @classmethod
    def of(cls, row: torch.Tensor) -> "Clock":
        return cls(*(int(v) for v in row.tolist()))


@dataclass
class Pending:
    """One rank's remapper state outside the state dict."""

    clock: Clock
    ids: torch.Tensor  # (pending,) int64
    history: dict[str, torch.Tensor]  # metadata name -> (pending,) int64


def remappers(model: nn.Module) -> dict[str, MCHManagedCollisionModule]:
    """This rank's remapper of every managed table, by table name (sharded or not)."""
    found: dict[str, MCHManagedCollisionModule] = {}
    for module in model.modules():
        table_modules = getattr(module, "_managed_collision_modules", None)
        if isinstance(table_modules, nn.ModuleDict):
            found.update({t: m for t, m in table_modules.items() if isinstance(m, MCHManagedCollisionModule)})
    return dict(sorted(found.items()))


def history_names(m: MCHManagedCollisionModule) -> list[str]:
    """The history metadata the remapper's eviction policy records per id seen (LRU: last_access_iter)."""
    return [info.metadata_name for info in m._eviction_policy.metadata_info if info.is_history_metadata]


def pending_of(m: MCHManagedCollisionModule) -> Pending:
    """What ``m`` has counted since its last admission (TorchRec's private attributes, read here only)."""
    n = m._current_history_buffer_offset
    capacity = m._input_history_buffer_size
    ids = m._history_accumulator[:n].clone() if capacity >= 0 else torch.empty(0, dtype=torch.int64)
    history = {name: (m._history_metadata[name][:n].clone() if capacity >= 0 else torch.empty(0, dtype=torch.int64))
               for name in history_names(m)}
    return Pending(Clock(n, capacity, m._last_eviction_iter, m._current_iter), ids, history)


def set_pending(m: MCHManagedCollisionModule, p: Pending) -> None:
    """Makes ``m`` continue from ``p`` (as TorchRec's _init_history_buffers and profile would have left it)."""
    c = p.clock
    if c.capacity >= 0:
        m._input_history_buffer_size = c.capacity
        m._history_accumulator = torch.zeros(c.capacity, dtype=torch.int64, device=m.device)
        m._history_accumulator[:c.pending] = p.ids
        for name in history_names(m):
            buffer = torch.zeros(c.capacity, dtype=torch.int64, device=m.device)
            buffer[:c.pending] = p.history[name]
            m.register_buffer(f"_history_{name}", buffer, persistent=False)
            m._history_metadata[name] = buffer
    m._current_history_buffer_offset = c.pending
    m._current_iter = c.iteration
    # -1 would make profile() restart the interval at this step: the saved admission iteration instead
    m._last_eviction_iter = c.last_admission if c.iteration >= 0 else -1


# -- saving ------------------------------------------------------------------------------------------
def _rows(local: torch.Tensor, width: int) -> torch.Tensor:
    """This rank's row of a (ranks, width) tensor: ``local`` padded with zeros."""
    row = torch.zeros(1, width, dtype=torch.int64)
    row[0, :local.numel()] = local
    return row


def _by_rank(row: torch.Tensor) -> torch.Tensor | ShardedTensor:
    """(1, width) on each rank as one (ranks, width) tensor (a ShardedTensor under a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return row
    rank, world = dist.get_rank(), dist.get_world_size()
    width = row.shape[1]
    shards = [ShardMetadata([r, 0], [1, width], f"rank:{r}/cpu") for r in range(world)]
    properties = TensorProperties(dtype=torch.int64, layout=torch.strided, requires_grad=False,
                                  memory_format=torch.contiguous_format, pin_memory=False)
    metadata = ShardedTensorMetadata(shards, torch.Size([world, width]), properties)
    return ShardedTensor._init_from_local_shards_and_global_metadata([Shard(row, shards[rank])], metadata)


def save_view(model: nn.Module, gather: Gather) -> dict[str, Any]:
    """The ``managed`` section of a checkpoint (empty without managed tables). A collective."""
    pending = {t: pending_of(m) for t, m in remappers(model).items()}
    widths = gather({t: p.clock.pending for t, p in pending.items()})
    out: dict[str, Any] = {}
    for table, p in pending.items():
        width = max([1] + [w[table] for w in widths])  # DCP stores no empty tensor
        out[f"{table}.pending_ids"] = _by_rank(_rows(p.ids, width))
        for name, values in p.history.items():
            out[f"{table}.pending_{name}"] = _by_rank(_rows(values, width))
        out[f"{table}.clock"] = _by_rank(p.clock.tensor().view(1, -1))
    return out


# -- loading -----------------------------------------------------------------------------------------
def load_request(model: nn.Module, metadata: Metadata) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(whole tensors for DCP to fill, the managed tables whose checkpoint has no such state).

    A checkpoint written before this state was saved has none: it loads as it did (the
    remapper restarts its interval), and the caller says so.
    """
    md = metadata.state_dict_metadata
    request: dict[str, torch.Tensor] = {}
    absent = []
    for table, m in remappers(model).items():
        keys = [f"{table}.clock", f"{table}.pending_ids"] + [f"{table}.pending_{n}" for n in history_names(m)]
        if not all(isinstance(md.get(f"{SECTION}.{k}"), TensorStorageMetadata) for k in keys):
            absent.append(table)
            continue
        for key in keys:
            request[key] = torch.zeros(tuple(md[f"{SECTION}.{key}"].size), dtype=torch.int64)
    return request, absent


def saved_pending(read: dict[str, torch.Tensor], table: str, m: MCHManagedCollisionModule,
                  iteration: int, where: str) -> tuple[list[Pending], list[str]]:
    """Every saved rank's :class:`Pending` for ``table`` from the tensors read, and the problems found
    (each naming the key, the rank and the value). ``iteration`` is the table's saved
    ``_current_iter_tensor``, which every rank's clock must agree with."""
    clocks, ids = read[f"{table}.clock"], read[f"{table}.pending_ids"]
    names = history_names(m)
    problems: list[str] = []
    if clocks.dim() != 2 or clocks.shape[1] != len(CLOCK_FIELDS) or ids.dim() != 2 or ids.shape[0] != clocks.shape[0]:
        return [], [f"{where}: {SECTION}.{table}.clock / pending_ids have shapes {tuple(clocks.shape)} / "
                    f"{tuple(ids.shape)}, not (ranks, {len(CLOCK_FIELDS)}) / (ranks, width)"]
    out = []
    for rank in range(clocks.shape[0]):
        c = Clock.of(clocks[rank])
        problems += [f"{where}: {SECTION}.{table}.clock rank {rank}: {p}" for p in clock_problems(c, ids.shape[1],
                                                                                                 m._eviction_interval,
                                                                                                 iteration)]
        mine = ids[rank, :max(0, min(c.pending, ids.shape[1]))]
        if ((mine < 0) | (mine >= MANAGED_ID_SPACE)).any():
            problems.append(f"{where}: {SECTION}.{table}.pending_ids rank {rank}: a raw id outside [0, 2**63 - 1)")
        out.append(Pending(c, mine, {n: read[f"{table}.pending_{n}"][rank, :mine.numel()] for n in names}))
    return out, problems


def clock_problems(c: Clock, width: int, interval: int, iteration: int) -> list[str]:
    """What is wrong with a saved clock (empty: nothing)."""
    problems = []
    if c.capacity < -1 or not 0 <= c.pending <= max(c.capacity, 0) or c.pending > width:
        problems.append(f"pending {c.pending} ids with a history capacity of {c.capacity} (saved width {width})")
    if c.iteration != -1 and c.iteration != iteration:
        problems.append(f"iteration {c.iteration}, but the remapper's _current_iter_tensor says {iteration}")
    if c.iteration >= 0 and not 0 <= c.iteration - c.last_admission < interval:
        problems.append(f"last admission at iteration {c.last_admission} and iteration {c.iteration}: the "
                        f"eviction_interval is {interval}")
    return problems


def iteration_of(m: MCHManagedCollisionModule) -> int:
    """The remapper's iteration as its state dict holds it."""
    return int(m._current_iter_tensor.item())


def clock_of(table: str, pendings: list[Pending], where: str) -> tuple[Optional[Clock], list[str]]:
    """The admission clock every saved rank agrees on (all ranks step together)."""
    seen = {(p.clock.last_admission, p.clock.iteration) for p in pendings}
    if len(seen) != 1:
        return None, [f"{where}: {SECTION}.{table}.clock: the ranks disagree on (last admission, iteration): "
                      f"{sorted(seen)}"]
    return pendings[0].clock, []
