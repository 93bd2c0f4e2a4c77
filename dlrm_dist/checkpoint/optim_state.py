"""The embedding optimizer's state in a layout-independent form, so it survives resharding.

TorchRec's optimizer state dict names and shapes a table's state after its sharding:

- data-parallel tables: torch-optimizer state under ``replicated_tables.<param>``
  (``sum`` (rows, dim), or (rows, 1) for row-wise Adagrad, and a ``step`` count);
- sharded tables: fbgemm state under ``fused.<param>`` as ``<table>.momentum1`` ...,
  a ShardedTensor of the table's global shape, or (rows,) for row-wise state;
- row-wise state of a column-sharded table: one accumulator per column shard, laid end to
  end, (rows * shards,).

DCP reshards a tensor only when its key and global shape agree, so a checkpoint stores each
table's state under a key of its own, in the table's logical shape (torch's state names,
optimizers.EMBEDDING_STATES):

    emb_optim.<table>.<state>                    (rows, dim) element-wise, (rows,) row-wise
    emb_optim.<table>.<state>.per_column_shard   (shards, rows): row-wise state of a
                                                 column-sharded table, as it was trained

(A fused state with no torch name keeps fbgemm's name and shape: it loads into the same
layout only. Data-parallel tables' step counts are not stored: they equal the global step.)

A sharded table with a non-fused kernel (row-wise on CPU gets the ``dense`` one) keeps its
state in the torch optimizer beside the data-parallel tables', as a plain tensor of this rank's
shard only; given the model state, ``slots`` lays it out like the table's weight (a ShardedTensor
of the table's logical shape), so it is saved whole and reshards like a fused table's, instead
of being taken for a replicated table's (which DCP saves from one rank only).

The saved tensors alias the live state, so saving copies nothing and loading a checkpoint of
the same layout writes in place. Across layouts, the only conversion is of per-column-shard
row-wise state: each shard accumulates the mean squared gradient over its own columns, so
the column-width-weighted mean of the shards' accumulators is exactly the accumulator of the
whole row, and a column shard starts from that whole-row value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardedTensorMetadata
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from dlrm_dist.distributed.weights import table_of
from dlrm_dist.names import EMBEDDING_KEY
from dlrm_dist.optimizer_registry import EMBEDDING_STATES, FUSED, REPLICATED_TABLES

Live = Union[torch.Tensor, ShardedTensor]
PER_COLUMN = ".per_column_shard"
SECTION = "emb_optim"


@dataclass
class Slot:
    """One state tensor of one table on this rank, as the optimizer holds it."""

    table: str
    name: str  # torch's state name: 'sum', 'exp_avg', 'exp_avg_sq'
    weight_key: str  # the table's key in the model state dict
    live: Live
    replicated: bool  # a data-parallel table's plain tensor
    rows: int
    column_widths: tuple[int, ...]  # of the weight's column shards, left to right

    @property
    def key(self) -> str:
        return f"{self.table}.{self.name}"

    @property
    def per_column(self) -> bool:
        """Row-wise state of a column-sharded table: (rows * shards,)."""
        return not self.replicated and len(self.live.size()) == 1 and len(self.column_widths) > 1

    def canonical(self) -> Live:
        """The live state in the table's logical shape (a view: same storage)."""
        if self.replicated and self.live.dim() == 2 and self.live.shape[1] == 1:
            return self.live.view(-1)  # torchrec's RowWiseAdagrad keeps (rows, 1)
        return self.live

    def per_column_view(self) -> ShardedTensor:
        """The live per-column-shard state as a (shards, rows) ShardedTensor (same storage)."""
        rows, k = self.rows, len(self.column_widths)

        def as_row(m: ShardMetadata) -> ShardMetadata:  # [i * rows, rows) -> row i of (shards, rows)
            return ShardMetadata([m.shard_offsets[0] // rows, 0], [1, rows], m.placement)

        metadata = self.live.metadata()
        local = [Shard(s.tensor.view(1, rows), as_row(s.metadata)) for s in self.live.local_shards()]
        return ShardedTensor._init_from_local_shards_and_global_metadata(local, ShardedTensorMetadata(
            [as_row(m) for m in metadata.shards_metadata], torch.Size([k, rows]), metadata.tensor_properties))


def _widths(chunks: Iterable[tuple[Sequence[int], Sequence[int]]]) -> tuple[int, ...]:
    """Column widths, left to right, from a 2-D tensor's (offsets, sizes) chunks."""
    widths: dict[int, int] = {}
    for offsets, sizes in sorted(chunks, key=lambda c: (c[0][1], c[0][0])):
        widths[offsets[1]] = sizes[1]
    return tuple(widths.values())


def _column_widths(weight: Live) -> tuple[int, ...]:
    if not isinstance(weight, ShardedTensor):
        return (weight.shape[1],)
    return _widths((m.shard_offsets, m.shard_sizes) for m in weight.metadata().shards_metadata)


def _like_weight(value: torch.Tensor, weight: ShardedTensor) -> Optional[ShardedTensor]:
    """A non-fused sharded table's torch-optimizer state (this rank's shard, a plain tensor) as a
    ShardedTensor laid out like the table's weight: the weight shard's shape, or one value per row
    (row-wise state of a row-sharded table, as (rows,)); None for any other shape."""
    local = weight.local_shards()
    meta = weight.metadata()
    if len(local) != 1:
        return None
    mine = local[0].metadata
    if tuple(value.shape) == tuple(mine.shard_sizes):
        shards, size, tensor = list(meta.shards_metadata), meta.size, value
    elif value.numel() == mine.shard_sizes[0] and all(tuple(m.shard_sizes[1:]) == tuple(meta.size[1:])
                                                     for m in meta.shards_metadata):
        shards = [ShardMetadata([m.shard_offsets[0]], [m.shard_sizes[0]], m.placement) for m in meta.shards_metadata]
        size, tensor = torch.Size([meta.size[0]]), value.view(-1)
        mine = ShardMetadata([mine.shard_offsets[0]], [mine.shard_sizes[0]], mine.placement)
    else:
        return None
    properties = replace(meta.tensor_properties, dtype=value.dtype, requires_grad=False)
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        [Shard(tensor, mine)], ShardedTensorMetadata(shards, size, properties))


def slots(optimizer: Any, embedding_optimizer: str, model_state: Optional[dict[str, Any]] = None) -> list[Slot]:
    """This rank's embedding optimizer state tensors, from the combined training optimizer.

    ``model_state`` (the model's state dict) tells a sharded table with a non-fused kernel from a
    data-parallel one: its weight there is a ShardedTensor (see the module docstring).
    """
    names = EMBEDDING_STATES[embedding_optimizer]
    fused_name = {v: k for k, v in names.items()}
    parts = dict(optimizer.optimizers)
    sharded = {table_of(k): v for k, v in (model_state or {}).items() if table_of(k) and isinstance(v, ShardedTensor)}
    out: list[Slot] = []
    for part, replicated in ((FUSED, False), (REPLICATED_TABLES, True)):
        if part not in parts:
            continue
        params = parts[part].params
        for param_key, state in parts[part].state_dict()["state"].items():
            table, weight = table_of(param_key), params[param_key]
            for state_key, value in state.items():
                raw = state_key if replicated else state_key.rsplit(".", 1)[-1]
                if table is None or raw == "step":
                    continue
                live = _like_weight(value, sharded[table]) if replicated and table in sharded else None
                if live is not None:
                    out.append(Slot(table, fused_name.get(raw, raw), param_key, live, False,
                                    sharded[table].size()[0], _column_widths(sharded[table])))
                else:
                    out.append(Slot(table, fused_name.get(raw, raw), param_key, value, replicated,
                                    weight.size()[0], _column_widths(weight)))
    return sorted(out, key=lambda s: s.key)


def save_view(state_slots: list[Slot]) -> dict[str, Live]:
    """What a checkpoint stores of the embedding optimizer (views, nothing copied)."""
    return {s.key + (PER_COLUMN if s.per_column else ""): (s.per_column_view() if s.per_column else s.canonical())
            for s in state_slots}


@dataclass
class _Saved:
    """How a checkpoint holds one table state: its key, shape and the weight's column widths."""

    key: str
    size: tuple[int, ...]
    column_widths: tuple[int, ...]

    @property
    def per_column(self) -> bool:
        return self.key.endswith(PER_COLUMN)


def saved_column_widths(metadata: Metadata, table: str) -> tuple[int, ...]:
    """Column widths of a table's weight shards in a checkpoint, left to right."""
    suffix = f"{EMBEDDING_KEY}{table}.weight"
    weight = next((v for k, v in metadata.state_dict_metadata.items() if k.endswith(suffix)), None)
    return _widths((c.offsets, c.sizes) for c in getattr(weight, "chunks", []))


def whole_rows(per_column: torch.Tensor, widths: tuple[int, ...]) -> torch.Tensor:
    """(shards, rows) per-column-shard row-wise state -> (rows,): the width-weighted mean."""
    w = torch.tensor(widths, dtype=per_column.dtype).view(-1, 1)
    return (per_column * w).sum(0) / w.sum()


def _saved(metadata: Metadata, slot: Slot) -> Optional[_Saved]:
    md = metadata.state_dict_metadata
    for key in (f"{SECTION}.{slot.key}", f"{SECTION}.{slot.key}{PER_COLUMN}"):
        if isinstance(md.get(key), TensorStorageMetadata):
            return _Saved(key[len(SECTION) + 1:], tuple(md[key].size), saved_column_widths(metadata, slot.table))
    return None


def load_view(state_slots: list[Slot], metadata: Metadata) -> tuple[dict[str, Live], Callable[[], None], list[str]]:
    """(tensors for DCP to fill, a function that moves them into the live state, what is missing).

    Same layout: the live tensors themselves are filled. Otherwise the saved tensor is read
    whole into a buffer and converted (only per-column-shard row-wise state needs it).
    """
    request: dict[str, Live] = {}
    copies: list[Callable[[], None]] = []
    missing = []
    for slot in state_slots:
        saved = _saved(metadata, slot)
        if saved is None:
            missing.append(f"{SECTION}.{slot.key} (the {slot.name!r} state of table {slot.table})")
            continue
        if not saved.per_column and not slot.per_column:
            request[saved.key] = slot.canonical()
        elif saved.per_column and slot.per_column and saved.column_widths == slot.column_widths:
            request[saved.key] = slot.per_column_view()
        else:
            buffer = torch.empty(saved.size, dtype=_dtype(slot.live))
            request[saved.key] = buffer
            copies.append(_converter(slot, buffer, saved))

    def finish() -> None:
        for copy in copies:
            copy()

    return request, finish, missing


def _dtype(t: Live) -> torch.dtype:
    return t.metadata().tensor_properties.dtype if isinstance(t, ShardedTensor) else t.dtype


def _converter(slot: Slot, buffer: torch.Tensor, saved: _Saved) -> Callable[[], None]:
    @torch.no_grad()
    def convert() -> None:
        rows = whole_rows(buffer, saved.column_widths) if saved.per_column else buffer
        if slot.per_column:  # every column shard starts from the whole row's value
            for shard in slot.live.local_shards():
                shard.tensor.copy_(rows)
        elif isinstance(slot.live, ShardedTensor):
            for shard in slot.live.local_shards():
                r0, n = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
                shard.tensor.copy_(rows[r0:r0 + n].view_as(shard.tensor))
        else:
            slot.canonical().copy_(rows)

    return convert


def set_replicated_steps(optimizer: Any, step: int) -> None:
    """Data-parallel tables' torch optimizers count steps; after loading, that is the global step."""
    parts = dict(optimizer.optimizers)
    if REPLICATED_TABLES in parts:
        for state in parts[REPLICATED_TABLES].state.values():
            if torch.is_tensor(state.get("step")):
                state["step"].fill_(step)
