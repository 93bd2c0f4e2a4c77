"""Batches from a preprocessed columnar directory (memory-mapped, vectorised), any schema.

Each rank reads its contiguous slice of each global batch; training visits batches in a
seeded per-epoch permutation (the same for every world size) and drops the last partial
batch; evaluation keeps every row, padding the last batch with label -1 rows (copies of the
split's first row) that the metrics ignore. Ids are checked against their table's size in
every batch (one max per feature): an id out of range fails with the file and feature
named, never clamped.

Multi-hot expansion (``multi_hot``, MLPerf DLRM-DCNv2's synthetic multi-hot Criteo): every
id x of feature f becomes the h_f ids {(x + o_fk) mod rows_f : k < h_f}, with o_f0 = 0 and
the other offsets drawn once from the seed (feature by feature, in schema order), so a
one-hot feature becomes a bag of h_f and a multi-hot (delimiter) feature's bag of n ids one
of n * h_f. ``bag_lengths`` reports the expanded lengths to the planner.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from torchrec.datasets.utils import Batch

from dlrm_dist.data.batches import SampleBlock, batch_position, to_batch
from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.layout import SplitArrays
from dlrm_dist.data.errors import DataError
from dlrm_dist.features.schema import FeatureSchema


class ColumnarDataset:
    """A preprocessed directory's splits as TorchRec batches for one rank."""

    def __init__(self, directory: str | Path, eval_split: str = "val", seed: int = 0, shuffle: bool = True,
                 multi_hot: Optional[Sequence[int]] = None) -> None:
        self.directory = Path(directory)
        self.meta, self.schema, self.splits = layout.check_directory(self.directory)
        if eval_split not in ("val", "test"):
            raise DataError(f"eval split {eval_split!r}: choose val or test")
        if self.splits["train"].rows == 0:
            raise DataError(f"{self.directory}: the training split is empty")
        if self.splits[eval_split].rows == 0:  # found now, not at the final eval after checkpoints were written
            other = "test" if eval_split == "val" else "val"
            raise DataError(f"{self.directory}: the {eval_split} split is empty, so there is nothing to evaluate on; "
                            f"evaluate on {other} (data.eval_split={other}, {self.splits[other].rows} rows) or "
                            f"preprocess again with a non-zero {eval_split} fraction")
        self.eval_split, self.seed, self.shuffle = eval_split, seed, shuffle
        self.feature_names = self.schema.sparse_names
        self._rows = {f.name: self.schema.id_range(f) for f in self.schema.sparse}  # managed: raw ids
        self._offsets = multi_hot_offsets(self.schema, multi_hot, seed)

    # -- the dataset interface -----------------------------------------------------------------
    def split(self, name: str) -> SplitArrays:
        return self.splits[self.eval_split if name == "eval" else name]

    def eval_batch_count(self, global_batch_size: int) -> int:
        return max(1, math.ceil(self.split("eval").rows / global_batch_size))

    def bag_lengths(self) -> dict[str, float]:
        """Mean ids per training sample of each feature, after the multi-hot expansion."""
        stored = self.meta["splits"]["train"]["bag_lengths"]
        return {f: float(stored[f]) * self._bag_factor(f) for f in self.feature_names}

    def _bag_factor(self, feature: str) -> int:
        offsets = self._offsets.get(feature)
        return 1 if offsets is None else len(offsets)

    def batches(self, split: str, global_batch_size: int, rank: int, world_size: int,
                num_batches: Optional[int] = None, start_batch: int = 0) -> Iterator[Batch]:
        """This rank's slice of global batches ``start_batch, ...`` of ``split``."""
        data = self.split(split)
        if split == "train":
            per_epoch = data.rows // global_batch_size
            if per_epoch == 0:
                raise DataError(f"{self.directory}: the training split has {data.rows} rows, fewer than one "
                                f"global batch of {global_batch_size}")
            count = num_batches
        else:  # the split's own batches (the test split, scored at the end, is not the eval split's size)
            per_epoch = max(1, math.ceil(data.rows / global_batch_size))
            count = per_epoch if num_batches is None else min(num_batches, per_epoch)
        local = global_batch_size // world_size
        b = start_batch
        while count is None or b < start_batch + count:
            position = batch_position(b, per_epoch, self.seed, self.shuffle and split == "train")
            lo = position * global_batch_size + rank * local
            yield to_batch(self.block(split, lo, local), self.feature_names)
            b += 1

    # -- reading -------------------------------------------------------------------------------
    def block(self, split: str, lo: int, count: int) -> SampleBlock:
        """Rows ``[lo, lo + count)`` of ``split``; rows past its end repeat its first row, labelled -1.

        (Padding with real rows rather than empty bags: TorchRec's sharded lookups fail on a
        rank whose batch holds no id at all for a feature.)
        """
        data = self.split(split)
        hi = min(max(lo, 0) + count, data.rows)
        lo = min(lo, hi)
        pad = count - (hi - lo)
        values, lengths = [], []
        for f in self.feature_names:
            v, n = self._bags(data, split, f, lo, hi)
            if pad:
                v0, n0 = self._bags(data, split, f, 0, 1)
                v, n = np.concatenate([v, np.tile(v0, pad)]), np.concatenate([n, np.repeat(n0, pad)])
            if f in self._offsets:
                v, n = expand(v, n, self._offsets[f], self._rows[f])
            values.append(v)
            lengths.append(n)
        dense = np.asarray(data.dense[lo:hi], dtype=np.float32)
        labels = np.asarray(data.labels[lo:hi], dtype=np.float32)
        if pad:
            dense = np.concatenate([dense, np.repeat(np.asarray(data.dense[:1], np.float32), pad, 0)])
            labels = np.concatenate([labels, np.full(pad, -1.0, np.float32)])
        return SampleBlock(dense, values, lengths, labels)

    def _bags(self, data: SplitArrays, split: str, feature: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        offsets = data.offsets[feature]
        if offsets is None:
            ids = np.asarray(data.ids[feature][lo:hi], dtype=np.int64)
            lengths = np.ones(hi - lo, np.int64)
        else:
            off = np.asarray(offsets[lo : hi + 1])
            ids = np.asarray(data.ids[feature][off[0] : off[-1]], dtype=np.int64)
            lengths = np.diff(off).astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self._rows[feature]):
            bad = int(ids.max()) if ids.max() >= self._rows[feature] else int(ids.min())
            raise DataError(f"{layout.ids_file(self.directory, self.split_name(split), feature)}: feature "
                            f"{feature!r} has id {bad} outside its table of {self._rows[feature]} rows "
                            f"(rows {lo}..{hi} of the {self.split_name(split)} split)")
        return ids, lengths

    def split_name(self, split: str) -> str:
        return self.eval_split if split == "eval" else split


# -- multi-hot expansion ---------------------------------------------------------------------------
def multi_hot_offsets(schema: FeatureSchema, sizes: Optional[Sequence[int]], seed: int) -> dict[str, np.ndarray]:
    """Each sparse feature's expansion offsets (o_f0 = 0, then h_f - 1 draws in [1, rows_f)), by name.

    ``sizes`` is one bag size for every sparse feature or one per feature, in schema order;
    None or empty: no expansion. The draws follow the features in order from one generator
    seeded by (seed, 7), as the Criteo loader drew them: a seed gives the bags it gave.
    """
    if not sizes:
        return {}
    per_feature = _per_feature(schema.sparse_names, list(sizes))
    rng = np.random.default_rng([seed, 7])
    offsets = {}
    for f, h in zip(schema.sparse, per_feature):
        rows = schema.table_rows(f.table)
        offsets[f.name] = np.concatenate([[0], rng.integers(1, max(rows, 2), h - 1)]).astype(np.int64)
    return offsets


def _per_feature(names: list[str], sizes: list) -> list[int]:
    """One bag size per sparse feature, checked (integers >= 1; one for all, or one each)."""
    if len(sizes) not in (1, len(names)):
        raise DataError(f"multi_hot has {len(sizes)} sizes for the {len(names)} sparse features "
                        f"({names[0]} .. {names[-1]}): give one size for all of them or one per feature, in order")
    per_feature = sizes * len(names) if len(sizes) == 1 else sizes
    bad = [f"{name}={h!r}" for name, h in zip(names, per_feature)
           if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1]
    if bad:
        raise DataError(f"multi_hot sizes must be integers >= 1 (ids per original id); got {', '.join(bad)}")
    return [int(h) for h in per_feature]


def expand(values: np.ndarray, lengths: np.ndarray, offsets: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Every id x of the bags becomes ``(x + offsets) mod rows``, next to each other (bag order kept)."""
    if rows > 2**62:  # a managed feature's raw ids: the sum could pass int64's range, not uint64's
        out = ((values[:, None].astype(np.uint64) + offsets[None, :].astype(np.uint64)) % np.uint64(rows)).astype(np.int64)
        return out.reshape(-1), lengths * len(offsets)
    out = (values[:, None] + offsets[None, :]) % rows
    return out.reshape(-1), lengths * len(offsets)
