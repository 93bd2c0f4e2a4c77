"""Streaming batches from preprocessed Criteo days (memory-mapped, no Python loop over rows).

Splits: every day but the last is training; the last day's FIRST half (rows [0, ceil(N/2)))
is validation and its SECOND half is test — TorchRec's convention.

- Each rank reads only its slice of each global batch (contiguous rows of the day files).
- Shuffling is by blocks of one global batch: each epoch visits the batches in a permutation
  drawn from (seed, epoch), the same for any world size.
- Last partial batch: training drops it; evaluation keeps every row by padding the last
  batch with label -1 rows, which the metrics ignore.
- Multi-hot (MLPerf DLRM-DCNv2): feature f's id x becomes the bag
  {(x + o_fk) mod rows_f : k < h_f}, with fixed offsets o_f0 = 0, o_fk drawn from the seed.
- Ids are reduced modulo the table size at load time when the files hold raw ids (TorchRec's
  own preprocessing), so such directories load as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from torchrec.datasets.utils import Batch

from dlrm_dist.data.batches import SampleBlock, batch_position, to_batch
from dlrm_dist.data.criteo import layout
from dlrm_dist.data.errors import DataError
from dlrm_dist.data.jobrecord import read_job
from dlrm_dist.data.npy import open_checked


@dataclass
class _Part:
    dense: np.ndarray
    sparse: np.ndarray
    labels: np.ndarray
    start: int
    stop: int


class _Split:
    """A concatenation of row ranges of day files, read by global row index."""

    def __init__(self, parts: list[_Part]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [p.stop - p.start for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dense, sparse, labels = [], [], []
        first = int(np.searchsorted(self.offsets, lo, side="right")) - 1
        for k in range(max(first, 0), len(self.parts)):
            a = max(lo, int(self.offsets[k]))
            b = min(hi, int(self.offsets[k + 1]))
            if a >= b:
                if a >= hi:
                    break
                continue
            p = self.parts[k]
            s = p.start + a - int(self.offsets[k])
            dense.append(p.dense[s : s + b - a])
            sparse.append(p.sparse[s : s + b - a])
            labels.append(p.labels[s : s + b - a])
        return np.concatenate(dense), np.concatenate(sparse), np.concatenate(labels).reshape(-1)


def _discover_days(directory: Path) -> list[int]:
    meta = layout.read_meta(directory)
    if meta is not None:
        return [d["day"] for d in meta["days"]]
    job = read_job(directory)
    if job is not None:  # our own preprocessing, not finished: say which day is missing
        o = job["options"]
        expected = o["kaggle_days"] if o["dataset"] == "kaggle" else len(job["inputs"])
        missing = [d for d in range(expected) if not layout.done_file(directory, d).is_file()]
        raise DataError(f"{directory}: incomplete: day {missing[0] if missing else '?'} missing "
                        f"({len(missing)} of {expected} days not written); rerun the same `dlrm-data preprocess` "
                        "command to finish it")
    days = sorted(int(p.name.split("_")[1]) for p in directory.glob("day_*_labels.npy"))
    if not days:
        raise DataError(f"{directory}: no day_<i>_labels.npy files (run `dlrm-data preprocess` first)")
    return days


def table_sizes(directory: str | Path, max_ind_range: int = 0) -> list[int]:
    """The rows of each of Criteo's tables in a preprocessed directory, without opening its days.

    From meta.json (dlrm-data preprocess), or ``max_ind_range`` for each when the files hold
    raw ids (TorchRec's own preprocessing), which are then hashed at load time.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data directory {str(directory)!r} does not exist")
    meta = layout.read_meta(directory)
    if meta and meta.get("table_sizes"):
        return list(meta["table_sizes"])
    if max_ind_range > 0:
        return [max_ind_range] * layout.NUM_SPARSE
    raise DataError(f"{directory} holds raw ids and no meta.json: give data.max_ind_range to hash them")


class CriteoDataset:
    """Preprocessed Criteo days as TorchRec batches for one rank."""

    def __init__(self, directory: str | Path, feature_names: Sequence[str], eval_split: str = "val",
                 seed: int = 0, max_ind_range: int = 0, multi_hot: Optional[Sequence[int]] = None,
                 shuffle: bool = True) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise DataError(f"data directory {str(directory)!r} does not exist")
        if eval_split not in ("val", "test"):
            raise DataError(f"eval split {eval_split!r}: choose val or test")
        self.feature_names, self.eval_split, self.seed, self.shuffle = list(feature_names), eval_split, seed, shuffle
        days = _discover_days(self.directory)
        if len(days) < 2:
            raise DataError(f"{directory}: {len(days)} day(s); need training days and a last (val/test) day")
        meta = layout.read_meta(self.directory)
        rows = {d["day"]: d["rows"] for d in meta["days"]} if meta else {}
        arrays = [self._open(d, rows.get(d)) for d in days]
        last = arrays[-1]
        half = math.ceil(len(last[2]) / 2)
        self.splits = {
            "train": _Split([_Part(*a, 0, len(a[2])) for a in arrays[:-1]]),
            "val": _Split([_Part(*last, 0, half)]),
            "test": _Split([_Part(*last, half, len(last[2]))]),
        }
        self.table_sizes = self._table_sizes(max_ind_range)
        self._sizes = np.asarray(self.table_sizes, dtype=np.int64)
        self.multi_hot = list(multi_hot) if multi_hot else None
        if self.multi_hot and len(self.multi_hot) not in (1, len(self.table_sizes)):
            raise DataError(f"multi_hot_sizes has {len(self.multi_hot)} entries; give 1 or {len(self.table_sizes)}")
        self._offsets = self._multi_hot_offsets()

    def _open(self, day: int, rows: Optional[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A day's three files, checked against each other (and meta.json's row count) by name."""
        missing = [layout.day_file(self.directory, day, k).name for k in layout.KINDS
                   if not layout.day_file(self.directory, day, k).is_file()]
        if missing:
            raise DataError(f"{self.directory}: day {day} is incomplete ({', '.join(missing)} missing)")
        labels = open_checked(layout.day_file(self.directory, day, "labels"), (np.int32, np.int64, np.float32),
                              (rows, 1))
        n = len(labels)
        dense = open_checked(layout.day_file(self.directory, day, "dense"), np.float32, (n, layout.NUM_DENSE))
        sparse = open_checked(layout.day_file(self.directory, day, "sparse"), (np.int32, np.int64),
                              (n, layout.NUM_SPARSE))
        return dense, sparse, labels

    def _table_sizes(self, max_ind_range: int) -> list[int]:
        sizes = table_sizes(self.directory, max_ind_range)
        hashed = not (layout.read_meta(self.directory) or {}).get("table_sizes")
        self._modulo = np.int64(max_ind_range) if hashed else None  # raw ids: hashed at load time
        return sizes

    def _multi_hot_offsets(self) -> Optional[list[np.ndarray]]:
        if not self.multi_hot:
            return None
        sizes = self.multi_hot * len(self.table_sizes) if len(self.multi_hot) == 1 else self.multi_hot
        rng = np.random.default_rng([self.seed, 7])
        return [np.concatenate([[0], rng.integers(1, max(rows, 2), h - 1)]).astype(np.int64)
                for h, rows in zip(sizes, self.table_sizes)]

    # -- the dataset interface the trainer uses ------------------------------------------------------
    def split_len(self, split: str) -> int:
        return len(self.splits[self.eval_split if split == "eval" else split])

    def eval_batch_count(self, global_batch_size: int) -> int:
        return math.ceil(self.split_len("eval") / global_batch_size)

    def teacher_auc(self, global_batch_size: int) -> Optional[float]:
        return None  # real data has no known best AUC

    def bag_lengths(self) -> dict[str, float]:
        sizes = [len(o) for o in self._offsets] if self._offsets else [1] * len(self.feature_names)
        return {f: float(h) for f, h in zip(self.feature_names, sizes)}

    def batches(self, split: str, global_batch_size: int, rank: int, world_size: int,
                num_batches: Optional[int] = None, start_batch: int = 0) -> Iterator[Batch]:
        """This rank's slice of global batches ``start_batch, ...`` of ``split``."""
        if split == "train":
            per_epoch = self.split_len("train") // global_batch_size
            if per_epoch == 0:
                raise DataError(f"the training split has {self.split_len('train')} rows: fewer than one "
                                f"global batch of {global_batch_size}")
            data, count = self.splits["train"], num_batches
        else:
            data = self.splits[self.eval_split if split == "eval" else split]
            per_epoch = self.eval_batch_count(global_batch_size)
            count = per_epoch if num_batches is None else min(num_batches, per_epoch)
        local = global_batch_size // world_size
        b = start_batch
        while count is None or b < start_batch + count:
            yield self._batch(data, split, self._position(split, b, per_epoch), global_batch_size, rank, local)
            b += 1

    # -- internals ------------------------------------------------------------------------------------
    def _position(self, split: str, b: int, per_epoch: int) -> int:
        return batch_position(b, per_epoch, self.seed, self.shuffle and split == "train")

    def _batch(self, data: _Split, split: str, position: int, gbs: int, rank: int, local: int) -> Batch:
        lo = position * gbs + rank * local
        hi = min(lo + local, len(data))
        dense, sparse, labels = data.read(lo, hi) if hi > lo else data.read(0, 1)
        valid = max(hi - lo, 0)
        if valid < local:  # the last evaluation batch: pad with ignored rows
            pad = local - valid
            dense = np.concatenate([dense[:valid], np.repeat(dense[:1], pad, 0)])
            sparse = np.concatenate([sparse[:valid], np.repeat(sparse[:1], pad, 0)])
            labels = np.concatenate([labels[:valid], np.full(pad, -1, labels.dtype)])
        sparse = sparse.astype(np.int64)
        if self._modulo is not None:
            sparse %= self._modulo
        else:
            self._check_ids(sparse, split, lo, hi)
        return to_batch(self._block(dense, sparse, labels), self.feature_names)

    def _check_ids(self, sparse: np.ndarray, split: str, lo: int, hi: int) -> None:
        """Ids beyond a table are an error naming the feature (fbgemm would clamp them to row 0)."""
        top, low = sparse.max(axis=0), sparse.min(axis=0)
        bad = np.flatnonzero((top >= self._sizes) | (low < 0))
        if bad.size:
            f = int(bad[0])
            value = int(top[f]) if top[f] >= self._sizes[f] else int(low[f])
            raise DataError(f"{self.directory}: feature {self.feature_names[f]} has id {value} outside its table of "
                            f"{self._sizes[f]} rows ({split} split, rows {lo}..{hi}); the day files and meta.json "
                            "disagree: preprocess again (with --overwrite)")

    def _block(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> SampleBlock:
        n = len(labels)
        if self._offsets is None:
            values = [sparse[:, f] for f in range(sparse.shape[1])]
            lengths = [np.ones(n, np.int64)] * sparse.shape[1]
        else:
            values = [((sparse[:, f, None] + off[None, :]) % rows).reshape(-1)
                      for f, (off, rows) in enumerate(zip(self._offsets, self.table_sizes))]
            lengths = [np.full(n, len(off), np.int64) for off in self._offsets]
        return SampleBlock(np.ascontiguousarray(dense, np.float32), values, lengths, labels.astype(np.float32))
