"""Batches from a preprocessed columnar directory (memory-mapped, vectorised), any schema.

Each rank reads its contiguous slice of each global batch; training visits batches in a
seeded per-epoch permutation (the same for every world size) and drops the last partial
batch; evaluation keeps every row, padding the last batch with label -1 rows (copies of the
split's first row) that the metrics ignore. Ids are checked against their table's size in
every batch (one max per feature): an id out of range fails with the file and feature
named, never clamped.

A directory of day partitions (``dlrm-data preprocess --partition`` / ``--append``) is read by
``PartitionedDataset``: it trains over the partitions chosen (``data.partitions``) in that
(time) order -- partition 1's batches, then 2's, ... -- each partition dropping its own last
partial batch and shuffled within itself only, by (seed, partition, epoch); epochs repeat the
whole sequence. Global batch ``b`` is epoch ``b // P`` (P: the partitions' batches together),
then the partition whose span holds ``b % P``: a pure function of ``b``, so a resumed run and
every rank and world size read the batches a single process would. ``partition_spans`` says
where each partition starts (``HasPartitions``); each partition's split name
(``partition_<N>``) evaluates its rows, and the eval split is ``data.eval_partition``.

Multi-hot expansion (``multi_hot``, MLPerf DLRM-DCNv2's synthetic multi-hot Criteo): every
id x of feature f becomes the h_f ids {(x + o_fk) mod rows_f : k < h_f}, with o_f0 = 0 and
the other offsets drawn once from the seed (feature by feature, in schema order), so a
one-hot feature becomes a bag of h_f and a multi-hot (delimiter) feature's bag of n ids one
of n * h_f. ``bag_lengths`` reports the expanded lengths to the planner.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
from torchrec.datasets.utils import Batch

from dlrm_dist.data import PartitionSpan
from dlrm_dist.data.batches import SampleBlock, batch_position, to_batch
from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.layout import SplitArrays
from dlrm_dist.data.errors import DataError
from dlrm_dist.data.partition_list import listing
from dlrm_dist.features.schema import FeatureSchema


log = logging.getLogger(__name__)

class ColumnarDataset:
    """A preprocessed directory's splits as TorchRec batches for one rank."""

    def __init__(self, directory: str | Path, eval_split: str = "val", seed: int = 0, shuffle: bool = True,
                 multi_hot: Optional[Sequence[int]] = None) -> None:
        self._open(directory, seed, shuffle, multi_hot)
        published = layout.partitions_of(self.meta, self.directory)
        if layout.is_partitioned(self.meta):
            raise DataError(f"{self.directory} holds day partitions ({listing(published)}), not train/val/test "
                            "splits: choose the partitions to train on and the one to evaluate, e.g. "
                            f"--data.partitions={listing(list(published)[:-1] or list(published))} "
                            f"--data.eval_partition={list(published)[-1] if published else 'N'}")
        if eval_split not in ("val", "test"):
            raise DataError(f"eval split {eval_split!r}: choose val or test")
        if self.splits["train"].rows == 0:
            raise DataError(f"{self.directory}: the training split is empty")
        if self.splits[eval_split].rows == 0:  # found now, not at the final eval after checkpoints were written
            other = "test" if eval_split == "val" else "val"
            raise DataError(f"{self.directory}: the {eval_split} split is empty, so there is nothing to evaluate on; "
                            f"evaluate on {other} (data.eval_split={other}, {self.splits[other].rows} rows) or "
                            f"preprocess again with a non-zero {eval_split} fraction")
        self.eval_split = eval_split

    def _open(self, directory: str | Path, seed: int, shuffle: bool, multi_hot: Optional[Sequence[int]]) -> None:
        """The directory, every split checked (layout.check_directory), and what batches need."""
        self.directory = Path(directory)
        self.meta, self.schema, self.splits = layout.check_directory(self.directory)
        self.arrays: dict[str, SplitArrays] = dict(self.splits)  # split name -> its files
        self.seed, self.shuffle = seed, shuffle
        self.feature_names = self.schema.sparse_names
        self._rows = {f.name: self.schema.id_range(f) for f in self.schema.sparse}  # managed: raw ids
        self._offsets = multi_hot_offsets(self.schema, multi_hot, seed)

    # -- the dataset interface -----------------------------------------------------------------
    def split(self, name: str) -> SplitArrays:
        found = self.arrays.get(self.split_name(name))
        if found is None:
            raise DataError(f"{self.directory}: no split {name!r} here; the splits are {sorted(self.arrays)}")
        return found

    def eval_batch_count(self, global_batch_size: int) -> int:
        return max(1, math.ceil(self.split("eval").rows / global_batch_size))

    def bag_lengths(self) -> dict[str, float]:
        """Mean ids per training sample of each feature, after the multi-hot expansion."""
        stored = self._train_bag_lengths()
        return {f: float(stored[f]) * self._bag_factor(f) for f in self.feature_names}

    def _train_bag_lengths(self) -> dict[str, float]:
        return self.meta["splits"]["train"]["bag_lengths"]

    def _bag_factor(self, feature: str) -> int:
        offsets = self._offsets.get(feature)
        return 1 if offsets is None else len(offsets)

    def batches(self, split: str, global_batch_size: int, rank: int, world_size: int,
                num_batches: Optional[int] = None, start_batch: int = 0) -> Iterator[Batch]:
        """This rank's slice of global batches ``start_batch, ...`` of ``split`` ("train": the
        training order, ``_train_order``; any other split: its own batches in order, each once)."""
        if split == "train":
            count, (_, position) = num_batches, self._train_order(global_batch_size)
        else:  # the split's own batches (the test split, scored at the end, is not the eval split's size)
            per_epoch = max(1, math.ceil(self.split(split).rows / global_batch_size))
            count = per_epoch if num_batches is None else min(num_batches, per_epoch)
            position = lambda b: (split, b % per_epoch)  # noqa: E731
        local = global_batch_size // world_size
        b = start_batch
        while count is None or b < start_batch + count:
            name, at = position(b)
            yield to_batch(self.block(name, at * global_batch_size + rank * local, local), self.feature_names)
            b += 1

    def _train_order(self, global_batch_size: int) -> tuple[int, Callable[[int], tuple[str, int]]]:
        """(global batches per epoch, global batch b -> (split, which of its batches)): the training
        split's batches in a seeded permutation per epoch, its last partial batch dropped."""
        rows = self.split("train").rows
        per_epoch = rows // global_batch_size
        if per_epoch == 0:
            raise DataError(f"{self.directory}: the training split has {rows} rows, fewer than one "
                            f"global batch of {global_batch_size}")
        return per_epoch, lambda b: ("train", batch_position(b, per_epoch, self.seed, self.shuffle))

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


@dataclass(frozen=True)
class StreamRows:
    """What a run's length is computed from (training/length.py reads ``splits["train"].rows``):
    the rows of the partitions it trains over."""

    rows: int


class PartitionedDataset(ColumnarDataset):
    """A directory of day partitions, trained over ``partitions`` in time order (module docstring)."""

    def __init__(self, directory: str | Path, partitions: Sequence[int], eval_partition: Optional[int] = None,
                 seed: int = 0, shuffle: bool = True, multi_hot: Optional[Sequence[int]] = None) -> None:
        self._open(directory, seed, shuffle, multi_hot)
        published = layout.partitions_of(self.meta, self.directory)
        self.partitions = self._chosen(published, list(partitions))
        self.eval_partition = self._eval_partition(published, eval_partition)
        self.eval_split = layout.partition_split(self.eval_partition)
        self.entries = {n: published[n] for n in (*self.partitions, self.eval_partition)}
        # what the trainer's length and final-test logic read: the training rows, and no val/test split
        self.splits = {"train": StreamRows(sum(published[n]["rows"] for n in self.partitions)),
                       **{layout.partition_split(n): self.arrays[layout.partition_split(n)] for n in self.entries}}
        self._permutation: tuple[tuple[int, int, int], np.ndarray] = ((-1, -1, -1), np.zeros(0, np.int64))

    def _chosen(self, published: dict[int, Any], partitions: list[int]) -> list[int]:
        where, asked = self.directory, listing(partitions)
        if not published:
            raise DataError(f"data.partitions={asked}: {where} holds train/val/test splits, no day partitions: drop "
                            "data.partitions and data.eval_partition, or preprocess day by day "
                            "(`dlrm-data preprocess --partition N`, then `--append`)")
        if not partitions:
            raise DataError(f"{where}: no partition chosen to train on; it holds partitions {listing(published)}")
        if partitions != sorted(set(partitions)):
            raise DataError(f"data.partitions={asked}: list each partition once, in increasing (time) order")
        missing = [n for n in partitions if n not in published]
        if missing:
            raise DataError(f"data.partitions={asked}: partition(s) {listing(missing)} do not exist in {where}; "
                            f"it holds partitions {listing(published)}")
        return partitions

    def _eval_partition(self, published: dict[int, Any], eval_partition: Optional[int]) -> int:
        where = self.directory
        if eval_partition is None:  # the next day after the last one trained on
            later = [n for n in published if n > self.partitions[-1]]
            if not later:
                raise DataError(f"data.partitions={listing(self.partitions)} leaves no later partition of {where} to "
                                f"evaluate on (it holds {listing(published)}): give data.eval_partition")
            return later[0]
        if eval_partition not in published:
            raise DataError(f"data.eval_partition={eval_partition}: no such partition in {where}; it holds partitions "
                            f"{listing(published)}")
        if eval_partition in self.partitions:
            raise DataError(f"data.eval_partition={eval_partition} is also in data.partitions="
                            f"{listing(self.partitions)}: evaluate on a partition the run does not train on")
        if eval_partition < self.partitions[-1]:  # allowed (a held-out day), but rarely meant: say so
            log.warning("data.eval_partition=%d is earlier than partition %d the run trains on: the eval scores a "
                        "past day with a model that has seen later days (the next-day score is the eval on the "
                        "day after the last one trained)", eval_partition, self.partitions[-1])
        return eval_partition

    # -- HasPartitions ---------------------------------------------------------------------------
    def partition_spans(self, global_batch_size: int) -> list[PartitionSpan]:
        """Each training partition's place in the training stream (first epoch), in training order."""
        spans, start = [], 0
        for n in self.partitions:
            rows = int(self.entries[n]["rows"])
            batches = rows // global_batch_size
            spans.append(PartitionSpan(n, start, batches, rows, layout.partition_split(n)))
            start += batches
        return spans

    def _train_bag_lengths(self) -> dict[str, float]:
        """The training partitions' mean bag lengths, weighted by their rows."""
        return layout.pooled_bag_lengths([self.entries[n] for n in self.partitions], self.feature_names)

    # -- the training stream ---------------------------------------------------------------------
    def _train_order(self, global_batch_size: int) -> tuple[int, Callable[[int], tuple[str, int]]]:
        """The stream over the partitions (module docstring): global batch b is epoch b // P, then the
        partition whose span holds b % P, shuffled within that partition only."""
        spans = [s for s in self.partition_spans(global_batch_size) if s.batches]
        per_epoch = sum(s.batches for s in spans)
        if per_epoch == 0:
            rows = ", ".join(f"{n}: {self.entries[n]['rows']}" for n in self.partitions)
            raise DataError(f"{self.directory}: no training partition has a full global batch of {global_batch_size} "
                            f"rows (rows per partition {rows}): lower the batch size or train on more partitions")
        starts = [s.start_batch for s in spans]

        def position(b: int) -> tuple[str, int]:
            epoch, i = divmod(b, per_epoch)
            span = spans[bisect.bisect_right(starts, i) - 1]
            return span.split, self._position(span.partition, epoch, i - span.start_batch, span.batches)

        return per_epoch, position

    def _position(self, partition: int, epoch: int, i: int, batches: int) -> int:
        """Which of the partition's batches its ``i``-th of this epoch reads: a permutation seeded by
        (seed, partition, epoch) when shuffling (the same for every world size)."""
        if not self.shuffle:
            return i
        key = (partition, epoch, batches)
        if self._permutation[0] != key:  # (the stream walks a partition's batches in a row: one draw each)
            self._permutation = key, np.random.default_rng([self.seed, partition, epoch]).permutation(batches)
        return int(self._permutation[1][i])


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
