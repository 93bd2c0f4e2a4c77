"""Data: the built-in synthetic generator, schema-driven columnar directories, and TorchRec batches.

Every source offers the same interface (``Dataset``): ``batches(split, global_batch_size,
rank, world_size, num_batches, start_batch)`` yielding this rank's slice of each global
batch, ``eval_batch_count(global_batch_size)`` and ``bag_lengths()`` (mean ids per sample of
each feature, for the planner). A source that knows the best AUC reachable on its eval split
(the synthetic generator, from its hidden teacher) also offers ``teacher_auc`` (``HasTeacher``);
``teacher_auc(data, global_batch_size)`` asks for it only where it exists. A columnar
directory trained over several day partitions in time order (``data.partitions``) also offers
``partition_spans`` (``HasPartitions``): where each partition's batches start in the training
stream, and the split name that evaluates that partition (progressive validation).

This package's ``__init__`` imports nothing heavy, so that preprocessing starts fast.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torchrec.datasets.utils import Batch


class Dataset(Protocol):
    feature_names: list[str]

    def batches(self, split: str, global_batch_size: int, rank: int, world_size: int,
                num_batches: Optional[int] = None, start_batch: int = 0) -> Iterator["Batch"]: ...

    def eval_batch_count(self, global_batch_size: int) -> int: ...

    def bag_lengths(self) -> dict[str, float]: ...


@runtime_checkable
class HasTeacher(Protocol):
    """An optional capability: the source knows the best AUC reachable on its eval split."""

    def teacher_auc(self, global_batch_size: int) -> float: ...


@dataclass(frozen=True)
class PartitionSpan:
    """One training partition's place in the training stream, in global batches.

    ``split`` is the name ``Dataset.batches`` and ``eval_batch_count`` take to evaluate this
    partition's rows (every row, eval padding) -- the "next-day" evaluation before training on it.
    """

    partition: int      # the partition's number, as in data.partitions (e.g. the day)
    start_batch: int    # first global training batch of this partition (0-based, within one epoch)
    batches: int        # global training batches it contributes per epoch
    rows: int           # its rows
    split: str          # the split name that evaluates it


@runtime_checkable
class HasPartitions(Protocol):
    """An optional capability: training visits day partitions in time order."""

    def partition_spans(self, global_batch_size: int) -> list[PartitionSpan]: ...


def teacher_auc(data: object, global_batch_size: int) -> Optional[float]:
    """``data``'s teacher AUC where it has a teacher, else None (real data has none)."""
    return data.teacher_auc(global_batch_size) if isinstance(data, HasTeacher) else None


__all__ = ["Dataset", "HasPartitions", "HasTeacher", "PartitionSpan", "teacher_auc"]
