"""Loading the managed tables of a checkpoint: in place, or resharded to this world size.

``io.load_checkpoint`` hands the managed tables to a :class:`ManagedLoad`. A table whose
row-wise shards are the checkpoint's loads in place, as every tensor does, and then its
remapper gets back what it had counted since its last admission (remappers.py), so the run
continues bit for bit from any step. A table whose shards differ (another world size) cannot
be loaded row by row: an id's owning rank and its row both move. For such a table every rank
reads the checkpoint's whole remapper buffers, weights and embedding optimizer state, places
each admitted id in its new shard (id_reshard.py: TorchRec's routing, the eviction policy's
order where a shard has too few rows) and writes its own shard: the id keeps its embedding row
and optimizer state, the pending ids go to their new ranks, and the log says what was kept.
A warm start loads through the same path.

Cost: resharding reads each such table's whole weights and optimizer state on every rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torchrec.modules.mc_modules import MCHManagedCollisionModule

from dlrm_dist.checkpoint import id_reshard, remappers
from dlrm_dist.checkpoint.id_reshard import Block, Placement
from dlrm_dist.checkpoint.manifest import CheckpointError
from dlrm_dist.checkpoint.optim_state import SECTION as OPTIM, Slot
from dlrm_dist.checkpoint.remappers import SECTION, Gather, Pending
from dlrm_dist.distributed.weights import table_of

logger = logging.getLogger(__name__)

IDS, ROWS = "_mch_sorted_raw_ids", "_mch_remapped_ids_mapping"
SEGMENTS = "_output_segments_tensor"  # rebuilt for this world size: never loaded from another one


@dataclass
class _Table:
    """One managed table of the model, and where its tensors are in the model state dict."""

    name: str
    module: MCHManagedCollisionModule
    prefix: str  # "<...>._managed_collision_modules.<table>."
    weight_key: str
    meta_names: list[str]  # the policy's per-slot metadata: counts / last_access_iter
    blocks: list[Block]  # its shards at this world size, in rank order
    weight: Any  # the live weight (this rank's shard, as the model state dict gave it)

    def buffer_keys(self) -> list[str]:
        return [self.prefix + k for k in (IDS, ROWS, *(f"_mch_{n}" for n in self.meta_names))]


def _blocks(chunks: list[tuple[int, int]]) -> list[Block]:
    return [Block(o, n) for o, n in sorted(chunks)]


def saved_blocks(metadata: Metadata, key: str) -> list[Block]:
    entry = metadata.state_dict_metadata.get(key)
    if not isinstance(entry, TensorStorageMetadata):
        return []
    return _blocks([(c.offsets[0], c.sizes[0]) for c in entry.chunks])


def live_blocks(value: Any) -> list[Block]:
    if isinstance(value, ShardedTensor):
        return _blocks([(m.shard_offsets[0], m.shard_sizes[0]) for m in value.metadata().shards_metadata])
    return [Block(0, value.shape[0])]


def _keep_by(m: MCHManagedCollisionModule, table: str) -> str:
    names = [i.metadata_name for i in m._eviction_policy.metadata_info if i.is_mch_metadata]
    if len(names) != 1 or names[0] not in id_reshard.KEEP_ORDER:
        raise CheckpointError(f"managed table {table}: resharding a remapper with the eviction policy "
                              f"{type(m._eviction_policy).__name__} is not supported (only LFU and LRU)")
    return names[0]


class ManagedLoad:
    """The managed tables' part of one ``load_checkpoint`` (built before DCP reads anything)."""

    def __init__(self, path: Path, model_state: dict[str, Any], model: Any, metadata: Metadata, rank: int,
                 gather: Gather) -> None:
        self.path, self.metadata, self.rank, self.gather = path, metadata, rank, gather
        self.live = model_state
        self.tables = self._tables(model_state, model)
        self.resharded = {t.name for t in self.tables if self._moves(t)}
        self.pending_request, absent = remappers.load_request(model, metadata)
        self.absent = set(absent)
        self.whole: dict[str, torch.Tensor] = {}  # DCP key -> whole tensor read for a resharded table

    @staticmethod
    def _tables(state: dict[str, Any], model: Any) -> list[_Table]:
        weights = {table_of(k): k for k in state if table_of(k)}
        out = []
        for name, m in remappers.remappers(model).items():
            ids_key = next(k for k in state if k.endswith(f"_managed_collision_modules.{name}.{IDS}"))
            meta = [i.metadata_name for i in m._eviction_policy.metadata_info if i.is_mch_metadata]
            out.append(_Table(name, m, ids_key[:-len(IDS)], weights[name], meta, live_blocks(state[ids_key]),
                              state[weights[name]]))
        return out

    def _moves(self, t: _Table) -> bool:
        """Whether the table's shards (and so the ids each rank owns) differ from the checkpoint's."""
        saved = saved_blocks(self.metadata, f"model.{t.prefix}{IDS}")
        return bool(saved) and saved != t.blocks

    # -- what DCP reads -------------------------------------------------------------------------------
    def model_request(self) -> dict[str, Any]:
        """The model state DCP fills: resharded tables' tensors as whole buffers (not the live shards)."""
        request = dict(self.live)
        for t in self.tables:
            if t.name not in self.resharded:
                continue
            request.pop(t.prefix + SEGMENTS, None)
            for key in t.buffer_keys() + [t.weight_key]:
                request[key] = self._whole(f"model.{key}")
        return request

    def redirect_optimizer(self, request: dict[str, Any]) -> None:
        """Resharded tables' embedding optimizer state is read whole too (``request`` edited in place)."""
        for key in list(request):
            if key.split(".", 1)[0] in self.resharded:
                request[key] = self._whole(f"{OPTIM}.{key}")

    def _whole(self, key: str) -> torch.Tensor:
        md = self.metadata.state_dict_metadata.get(key)
        if not isinstance(md, TensorStorageMetadata):
            raise CheckpointError(f"{self.path} has no {key}: a managed table cannot be resharded without it")
        self.whole[key] = torch.zeros(tuple(md.size), dtype=md.properties.dtype)
        return self.whole[key]

    # -- after DCP has read ---------------------------------------------------------------------------
    def finish(self, slots: list[Slot]) -> None:
        """Writes what was read into the live remappers, shards and optimizer state (every rank)."""
        problems: list[str] = []
        for t in self.tables:
            placements = self._reshard(t, slots, problems) if t.name in self.resharded else None
            problems += self._pending(t, placements)
        problems += [p for t in self.tables if t.name not in self.resharded for p in self._local_problems(t)]
        found = sorted({p for part in self.gather(problems) for p in part})  # every rank raises alike
        if found:
            raise CheckpointError(f"{self.path}: the managed tables' remapper state is not valid:\n"
                                  + "\n".join(f"  - {p}" for p in found))
        if self.absent:
            logger.warning("%s holds no ids counted since the last admission for %s (written before they were "
                           "saved): the remappers restart their eviction interval at this step", self.path,
                           ", ".join(sorted(self.absent)))

    def _reshard(self, t: _Table, slots: list[Slot], problems: list[str]) -> Optional[list[Placement]]:
        model_key = f"model.{t.prefix}"
        old = saved_blocks(self.metadata, model_key + IDS)
        meta = {n: self.whole[f"{model_key}_mch_{n}"] for n in t.meta_names}
        adm, found = id_reshard.admitted(self.whole[model_key + IDS], self.whole[model_key + ROWS], meta, old)
        if found:
            problems += [f"{t.name}: {p}" for p in found]
            return None
        keep_by = _keep_by(t.module, t.name)
        placements = id_reshard.place(adm, old, t.blocks, keep_by)
        mine = placements[self.rank]
        self._write_remapper(t, mine)
        self._write_rows(t.weight, self.whole[f"model.{t.weight_key}"], mine)
        for s in slots:
            if s.table == t.name:
                self._write_rows(s.canonical(), self.whole[f"{OPTIM}.{s.key}"], mine)
        if self.rank == 0:
            for line in id_reshard.describe(t.name, placements, len(old), keep_by):
                logger.info("%s", line)
        return placements

    @staticmethod
    @torch.no_grad()
    def _write_remapper(t: _Table, p: Placement) -> None:
        m = t.module
        if (m._output_global_offset, m._zch_size) != (p.block.offset, p.block.rows):
            raise CheckpointError(f"managed table {t.name}: this rank's remapper holds rows {m._output_global_offset}-"
                                  f"{m._output_global_offset + m._zch_size - 1}, its shard {p.block}")
        ids, rows, meta = p.slots()
        m._mch_sorted_raw_ids.copy_(ids)
        m._mch_remapped_ids_mapping.copy_(rows)
        for name, values in meta.items():
            m._mch_metadata[name].copy_(values)

    @staticmethod
    @torch.no_grad()
    def _write_rows(live: Any, whole: torch.Tensor, p: Placement) -> None:
        """This rank's rows of a per-row tensor (row-wise: its local shard is the placement's block)."""
        local = live.local_shards()[0].tensor if isinstance(live, ShardedTensor) else \
            live[p.block.offset:p.block.offset + p.block.rows]
        local.copy_(p.rows_of(whole).view_as(local))

    def _pending(self, t: _Table, placements: Optional[list[Placement]]) -> list[str]:
        """Restores (or, resharded, routes) what the remappers had counted since their last admission."""
        if t.name in self.absent or (t.name in self.resharded and placements is None):
            return []  # nothing saved, or the table's buffers were refused already
        read = {k: v for k, v in self.pending_request.items() if k.startswith(f"{t.name}.")}
        saved, problems = remappers.saved_pending(read, t.name, t.module, remappers.iteration_of(t.module),
                                                  str(self.path))
        if problems:
            return problems
        clock, problems = remappers.clock_of(t.name, saved, str(self.path))
        if problems:
            return problems
        if placements is None:
            if len(saved) <= self.rank:
                return [f"{self.path}: {SECTION}.{t.name}.clock has {len(saved)} rank(s) for this rank {self.rank}"]
            mine = saved[self.rank]
            moved = id_reshard.route(mine.ids, len(saved)) != self.rank
            if moved.any():
                return [f"{self.path}: {SECTION}.{t.name}.pending_ids rank {self.rank}: id {int(mine.ids[moved][0])} "
                        "is outside this rank's block of the id space"]
            remappers.set_pending(t.module, mine)
        else:
            remappers.set_pending(t.module, _routed(saved, clock, len(placements), self.rank))
        return []

    @staticmethod
    def _local_problems(t: _Table) -> list[str]:
        """This rank's loaded remapper buffers, checked as a resharded table's are."""
        m = t.module
        block = Block(m._output_global_offset, m._zch_size)
        k = t.blocks.index(block) if block in t.blocks else -1
        return [f"{t.name}: {p}" for p in id_reshard.shard_problems(m._mch_sorted_raw_ids, m._mch_remapped_ids_mapping,
                                                                   block, k, len(t.blocks))]


def _routed(saved: list[Pending], clock: remappers.Clock, ranks: int, rank: int) -> Pending:
    """This rank's share of every saved rank's pending ids, at ``ranks`` ranks (in saved rank order).

    The history capacity (TorchRec sizes it at the first batch, for the ids a rank sees) is the
    saved ranks' total split evenly, and at least what this rank receives.
    """
    ids = torch.cat([p.ids for p in saved])
    mine = id_reshard.route(ids, ranks) == rank
    history = {n: torch.cat([p.history[n] for p in saved])[mine] for n in saved[0].history}
    sized = [p.clock.capacity for p in saved if p.clock.capacity >= 0]
    capacity = max(-(-sum(sized) // ranks), int(mine.sum())) if sized else -1
    return Pending(remappers.Clock(int(mine.sum()), capacity, clock.last_admission, clock.iteration), ids[mine], history)
