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


def shard_problems(ids: torch.Tensor, rows: torch.Tensor, block: Block, k: int, shards: int) -> list[str]:
    """What is wrong with shard ``k``'s remapper buffers (its slots: sorted raw ids and their rows).

    An admitted id must be a raw id, unique, of this shard's block of the id space, and map to one
    of the shard's rows other than its miss row, no two ids to one row; one slot stays free (the
    miss row's).
    """
    problems = []
    taken = ids != EMPTY
    if taken.all():
        problems.append(f"shard {k} ({block}) has no free slot for its miss row")
    held, at = ids[taken], rows[taken]
    outside = (at < block.offset) | (at >= block.miss)
    if outside.any():
        problems.append(f"shard {k} ({block}) maps an id to row {int(at[outside][0])}, outside its rows "
                        "(its miss row excluded)")
    if ((held < 0) | (held >= MANAGED_ID_SPACE)).any():
        problems.append(f"shard {k} ({block}) holds an id outside [0, 2**63 - 1)")
    if held.unique().numel() != held.numel():
        problems.append(f"shard {k} ({block}): an id is admitted twice")
    if at.unique().numel() != at.numel():
        problems.append(f"shard {k} ({block}): two ids share a row")
    foreign = (held // id_block(shards)) != k
    if foreign.any():
        problems.append(f"shard {k} ({block}): id {int(held[foreign][0])} is held by a shard that does not own "
                        "its block of the id space")
    return problems


def admitted(ids: torch.Tensor, rows: torch.Tensor, meta: dict[str, torch.Tensor],
             blocks: list[Block]) -> tuple[Admitted, list[str]]:
    """The admitted ids of the whole (concatenated) remapper buffers, and what is wrong with them
    (:func:`shard_problems` of each old shard: its slots are its rows' positions)."""
    problems = [p for k, b in enumerate(blocks) for p in shard_problems(
        ids[b.offset:b.offset + b.rows], rows[b.offset:b.offset + b.rows], b, k, len(blocks))]
    taken = ids != EMPTY
    return Admitted(ids[taken], rows[taken], {n: v[taken] for n, v in meta.items()}), problems


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
