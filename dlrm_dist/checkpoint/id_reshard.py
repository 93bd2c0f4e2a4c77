"""Resharding a managed table: which raw id goes to which row of which shard at another world size.

TorchRec shards a managed table row-wise: rank r's remapper owns the raw ids of block r of the
id space (``id // ceil((2**63 - 1) / ranks)``) and the rows of shard r, whose last row is its
miss row (ids not admitted). At another world size an id's owner and the shards' rows change,
so the remapper state cannot be resharded as rows are. Here, from every old shard's buffers
(sorted raw ids, their rows, the policy's per-id metadata: LFU ``counts``, LRU
``last_access_iter``), each admitted id is routed to its new shard by TorchRec's rule; a new
shard keeps at most its rows - 1 ids, and when more arrive it keeps them in the eviction
policy's own order (the highest count for LFU, the latest access for LRU; ties: the lower raw
id), so the result depends on the saved state only. Kept ids take the shard's first rows in raw
id order; the remaining rows are free (zeros: TorchRec rewrites a row when it admits an id to
it); the miss row is the old miss row of the shard that owned the start of the new block.
Every function here is pure (no process group): each rank computes the same placement and
writes its own shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlrm_dist.features.schema import MANAGED_ID_SPACE

EMPTY = torch.iinfo(torch.int64).max  # TorchRec's value of a free slot in _mch_sorted_raw_ids
KEEP_ORDER = {"counts": "the highest counts (LFU)", "last_access_iter": "the latest access (LRU)"}


@dataclass(frozen=True)
class Block:
    """One shard's rows: [offset, offset + rows); the last one is its miss row."""

    offset: int
    rows: int

    @property
    def miss(self) -> int:
        return self.offset + self.rows - 1

    def __str__(self) -> str:
        return f"rows {self.offset}-{self.offset + self.rows - 1}"


def id_block(ranks: int) -> int:
    """The width of each rank's block of the id space (TorchRec's row-wise bucketization)."""
    return -(-MANAGED_ID_SPACE // ranks)  # integers: a float quotient would round 2**63 - 1 up to 2**63


@dataclass
class Admitted:
    """Every id a table's old shards had admitted: raw id, old row, the policy's metadata."""

    ids: torch.Tensor
    rows: torch.Tensor
    meta: dict[str, torch.Tensor]


def admitted(ids: torch.Tensor, rows: torch.Tensor, meta: dict[str, torch.Tensor],
             blocks: list[Block]) -> tuple[Admitted, list[str]]:
    """The admitted ids of the whole (concatenated) remapper buffers, and what is wrong with them.

    Each old shard's slots are its rows' positions; a slot holding ``EMPTY`` is free. An admitted
    id must be a raw id, unique, held by the shard that owns its block, and map to one of that
    shard's rows other than its miss row.
    """
    problems: list[str] = []
    taken = ids != EMPTY
    owner = torch.empty_like(ids)
    for k, b in enumerate(blocks):
        owner[b.offset:b.offset + b.rows] = k
        mine = slice(b.offset, b.offset + b.rows)
        if taken[mine].all():
            problems.append(f"shard {k} ({b}) has no free slot for its miss row")
        out = taken[mine] & ((rows[mine] < b.offset) | (rows[mine] >= b.miss))
        if out.any():
            problems.append(f"shard {k} ({b}) maps an id to row {int(rows[mine][out][0])}, outside its rows "
                            "(its miss row excluded)")
    kept_ids, kept_rows = ids[taken], rows[taken]
    if ((kept_ids < 0) | (kept_ids >= MANAGED_ID_SPACE)).any():
        problems.append("an admitted id is outside [0, 2**63 - 1)")
    if kept_ids.unique().numel() != kept_ids.numel():
        problems.append("an id is admitted twice")
    if kept_rows.unique().numel() != kept_rows.numel():
        problems.append("two ids share a row")
    wrong_owner = (kept_ids // id_block(len(blocks))) != owner[taken]
    if wrong_owner.any():
        problems.append(f"id {int(kept_ids[wrong_owner][0])} is held by a shard that does not own its block of the id space")
    return Admitted(kept_ids, kept_rows, {n: v[taken] for n, v in meta.items()}), problems


@dataclass
class Placement:
    """One new shard: the ids it keeps (raw id order), where their rows come from, what it dropped."""

    block: Block
    ids: torch.Tensor
    source_rows: torch.Tensor  # old row of each kept id
    meta: dict[str, torch.Tensor]
    miss_source: int  # old row the new miss row takes
    arrived: int  # ids routed to this shard
    dropped_ids: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    def slots(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The shard's remapper buffers: sorted raw ids, their rows, the policy's metadata."""
        free = self.block.rows - self.ids.numel()
        ids = torch.cat([self.ids, torch.full((free,), EMPTY, dtype=torch.int64)])
        rows = torch.arange(self.block.offset, self.block.offset + self.block.rows, dtype=torch.int64)
        meta = {n: torch.cat([v, torch.zeros(free, dtype=torch.int64)]) for n, v in self.meta.items()}
        return ids, rows, meta

    def rows_of(self, old: torch.Tensor) -> torch.Tensor:
        """This shard's rows of a per-row tensor (weights, optimizer state) from the old whole one."""
        out = torch.zeros((self.block.rows, *old.shape[1:]), dtype=old.dtype)
        out[:self.ids.numel()] = old[self.source_rows]
        out[self.block.rows - 1] = old[self.miss_source]
        return out


def _keep(ids: torch.Tensor, score: torch.Tensor, room: int) -> torch.Tensor:
    """Indices of the ``room`` ids with the highest ``score`` (ties: the lower raw id)."""
    by_id = torch.argsort(ids, stable=True)
    by_score = torch.argsort(score[by_id], descending=True, stable=True)
    return by_id[by_score][:room]


def place(adm: Admitted, old: list[Block], new: list[Block], keep_by: str) -> list[Placement]:
    """Each new shard's ids, in order of rank. ``keep_by`` names the metadata that decides which
    ids a full shard keeps (``counts`` or ``last_access_iter``: higher stays)."""
    owner = adm.ids // id_block(len(new))
    old_width = id_block(len(old))
    out = []
    for r, b in enumerate(new):
        mine = torch.nonzero(owner == r).flatten()
        keep = mine[_keep(adm.ids[mine], adm.meta[keep_by][mine], max(b.rows - 1, 0))]
        keep = keep[torch.argsort(adm.ids[keep])]
        dropped = mine[~torch.isin(mine, keep)]
        start_owner = min((r * id_block(len(new))) // old_width, len(old) - 1)
        out.append(Placement(b, adm.ids[keep], adm.rows[keep], {n: v[keep] for n, v in adm.meta.items()},
                             old[start_owner].miss, mine.numel(), adm.ids[dropped]))
    return out


def route(ids: torch.Tensor, ranks: int) -> torch.Tensor:
    """The new rank of each raw id."""
    return ids // id_block(ranks)


def describe(table: str, placements: list[Placement], old_shards: int, keep_by: str) -> list[str]:
    """The log lines of one table's resharding: ids kept overall, and every shard that dropped some."""
    arrived = sum(p.arrived for p in placements)
    kept = sum(p.ids.numel() for p in placements)
    lines = [f"{table}: remapper resharded from {old_shards} to {len(placements)} shard(s): {kept} of {arrived} "
             "admitted ids kept, each with its embedding row and optimizer state"]
    for r, p in enumerate(placements):
        if p.dropped_ids.numel():
            lines.append(f"  shard {r} ({p.block}): {p.arrived} ids for {p.block.rows - 1} rows: kept the "
                         f"{p.ids.numel()} with {KEEP_ORDER.get(keep_by, keep_by)}, dropped {p.dropped_ids.numel()} "
                         "(they map to the miss row until admitted again)")
    return lines
