"""Managed tables' remappers frozen for serving: raw 64-bit ids -> table rows, as TorchRec maps them in eval mode.

A managed table (kind managed) is remapped in training by TorchRec's ``MCHManagedCollisionModule``
(torchrec/modules/mc_modules.py), sharded row-wise over S ranks: rank s owns the rows
``[offsets[s], offsets[s+1])`` and the block ``[s*B, (s+1)*B)`` of the id space,
``B = ceil((2**63 - 1) / S)`` (RwSparseFeaturesDist's block bucketization, one bucket a rank).
Its remapper holds ``_mch_sorted_raw_ids`` (admitted ids, sorted, empty slots int64 max) and
``_mch_remapped_ids_mapping`` (each slot's row). In eval mode (``profile`` returns at once: nothing
counted, nothing admitted or evicted) ``_mch_remap`` maps an id v routed to shard s to
``mapping[i]`` where ``i = searchsorted(sorted[:-1], v)`` if ``sorted[i] == v``, else to the
shard's last row ``offsets[s+1] - 1``. With a sorted slice that is: v's row if v is admitted in
shard s, else shard s's last row -- whether v was counted but not admitted, or never seen.

Frozen, the S shards become four int64 arrays (``Frozen``), one search for all shards: every
admitted id that its own shard can reach (an id held by a shard whose block does not hold it is
never routed there: it is left out), globally sorted (blocks are disjoint and ordered), with its
row; each block's first id; each shard's miss row. Which shard holds an (id, row) pair is told by
its row, not its slot: a checkpoint read into an unsharded module has its shards' buffers
concatenated and then re-sorted as one (the module's load hook, ``validate_state``), which moves
ids between the shards' slot ranges but keeps every id with its row. ``remap`` is plain torch (searchsorted,
bucketize, where) traced into the exported program; ``check_frozen`` refuses arrays that are not
such a state (a tampered export). Needs torch and numpy only: no TorchRec.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from dlrm_dist.serving.manifest import ExportError

logger = logging.getLogger(__name__)
ID_SPACE = 2**63 - 1  # TorchRec's input_hash_size for our managed tables (features.schema.MANAGED_ID_SPACE)
EMPTY = int(np.iinfo(np.int64).max)  # an empty remapper slot (TorchRec fills _mch_sorted_raw_ids with it)
ARRAYS = ("ids", "rows", "starts", "miss")


def block_starts(shards: int) -> list[int]:
    """The first raw id of each of ``shards`` blocks of the id space, as TorchRec routes ids row-wise."""
    block = -(-ID_SPACE // shards)
    return [s * block for s in range(shards)]


def state_name(table_index: int, array: str) -> str:
    """The program's buffer holding ``array`` of table ``table_index``'s frozen remapper."""
    return f"remap_{table_index}_{array}"


@dataclass(frozen=True)
class Frozen:
    """One managed table's remapper, frozen: sorted admitted ids, their rows, block starts, miss rows."""

    ids: torch.Tensor  # int64 [rows]: admitted ids ascending, then EMPTY
    rows: torch.Tensor  # int64 [rows]: the row of each admitted id (0 for the padding)
    starts: torch.Tensor  # int64 [S]: block_starts(S)
    miss: torch.Tensor  # int64 [S]: each shard's last row

    @property
    def admitted(self) -> int:
        return int((self.ids != EMPTY).sum())


def _holders(rows: np.ndarray, offsets: Sequence[int]) -> np.ndarray:
    """The shard owning each row (shard s owns rows ``offsets[s]:offsets[s+1]``)."""
    return np.searchsorted(np.asarray(offsets[1:]), rows, side="right")


def shard_problems(table: str, sorted_ids: np.ndarray, mapping: np.ndarray, offsets: Sequence[int]) -> list[str]:
    """What keeps the buffers from being TorchRec remappers' state (empty: none): every row held by one
    slot (each shard's mapping is a permutation of its rows), no id admitted twice by one shard."""
    rows = offsets[-1]
    if sorted_ids.shape != (rows,) or mapping.shape != (rows,):
        return [f"table {table!r}: remapper buffers of {sorted_ids.shape}/{mapping.shape} entries for {rows} rows"]
    if not np.array_equal(np.sort(mapping), np.arange(rows)):
        return [f"table {table!r}: _mch_remapped_ids_mapping does not hold each of the rows 0-{rows - 1} once"]
    pairs = np.stack([_holders(mapping, offsets), sorted_ids], axis=1)[sorted_ids != EMPTY]
    if len(np.unique(pairs, axis=0)) != len(pairs):
        return [f"table {table!r}: a shard's _mch_sorted_raw_ids admits an id twice"]
    return []


def freeze(table: str, sorted_ids: torch.Tensor, mapping: torch.Tensor, offsets: Sequence[int]) -> Frozen:
    """The frozen form of table ``table``'s S remappers, from their buffers concatenated (as a checkpoint
    reassembles them; shard s owns rows ``offsets[s]:offsets[s+1]``). Slot order does not matter: an
    unsharded module re-sorts the concatenation when it loads it, so each (id, row) pair is placed
    by its row's shard. ExportError names a state TorchRec could not have written."""
    ids, rows = sorted_ids.detach().cpu().numpy().astype(np.int64), mapping.detach().cpu().numpy().astype(np.int64)
    problems = shard_problems(table, ids, rows, offsets)
    if problems:
        raise ExportError(f"the checkpoint's remapper state is damaged: {'; '.join(problems)}; nothing was written")
    starts = np.asarray(block_starts(len(offsets) - 1), np.int64)
    admitted = ids != EMPTY
    keep = admitted & (np.searchsorted(starts, ids, side="right") - 1 == _holders(rows, offsets))
    if (unreachable := int((admitted & ~keep).sum())):
        logger.warning("table %r: %d admitted id(s) sit in a shard that never receives them (not its block of the "
                       "id space): they are left out, as the trained model never looks them up", table, unreachable)
    order = np.argsort(ids[keep], kind="stable")
    n = len(order)
    out_ids = np.full(len(ids), EMPTY, np.int64)
    out_rows = np.zeros(len(ids), np.int64)
    out_ids[:n], out_rows[:n] = ids[keep][order], rows[keep][order]
    miss = np.asarray(offsets[1:], np.int64) - 1
    return Frozen(*(torch.from_numpy(a) for a in (out_ids, out_rows, starts, miss)))


def remap(values: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor,
          miss: torch.Tensor) -> torch.Tensor:
    """The rows of raw ids ``values``: an admitted id's row, else its block's shard's miss row."""
    at = torch.searchsorted(ids, values).clamp(max=ids.shape[0] - 1)
    shard = (torch.bucketize(values, starts, right=True) - 1).clamp(min=0)
    return torch.where(ids[at] == values, rows[at], miss[shard])


def check_frozen(table: str, arrays: dict[str, torch.Tensor], offsets: Sequence[int], admitted: int) -> list[str]:
    """Why ``arrays`` (ids, rows, starts, miss of an export) are not table ``table``'s frozen remapper
    for shards at rows ``offsets`` holding ``admitted`` ids (empty: they are)."""
    where = f"the remapper of table {table!r}"
    shards, table_rows = len(offsets) - 1, offsets[-1]
    want = {"ids": (table_rows,), "rows": (table_rows,), "starts": (shards,), "miss": (shards,)}
    bad = [f"{where}: {a} is {arrays[a].dtype} {list(arrays[a].shape)}, not int64 {list(want[a])}"
           for a in ARRAYS if arrays[a].dtype != torch.int64 or tuple(arrays[a].shape) != want[a]]
    if bad:
        return bad
    ids, rows, starts, miss = (arrays[a].numpy() for a in ARRAYS)
    out = []
    if not np.array_equal(starts, block_starts(shards)):
        out.append(f"{where}: starts are not the {shards} blocks of the id space TorchRec routes by")
    if not np.array_equal(miss, np.asarray(offsets[1:]) - 1):
        out.append(f"{where}: miss rows {miss.tolist()[:4]} are not each shard's last row")
    n = int((ids != EMPTY).sum())
    real, their_rows = ids[:n], rows[:n]
    if n != admitted or np.any(ids[n:] != EMPTY):
        out.append(f"{where}: {n} ids are admitted where the manifest says {admitted}, or padding is not at the end")
    elif n and (np.any(np.diff(real) <= 0) or real[0] < 0):
        out.append(f"{where}: ids are not distinct, non-negative and ascending")
    else:
        shard = np.searchsorted(starts, real, side="right") - 1
        lo, hi = np.asarray(offsets[:-1])[shard], np.asarray(offsets[1:])[shard]
        if np.any(their_rows < lo) or np.any(their_rows >= hi) or len(np.unique(their_rows)) != n:
            out.append(f"{where}: rows are not distinct rows of each id's own shard")
    return out
