"""Data: the built-in synthetic generator, schema-driven columnar directories, and TorchRec batches.

Every source offers the same interface (``Dataset``): ``batches(split, global_batch_size,
rank, world_size, num_batches, start_batch)`` yielding this rank's slice of each global
batch, ``eval_batch_count(global_batch_size)`` and ``bag_lengths()`` (mean ids per sample of
each feature, for the planner). A source that knows the best AUC reachable on its eval split
(the synthetic generator, from its hidden teacher) also offers ``teacher_auc`` (``HasTeacher``);
``teacher_auc(data, global_batch_size)`` asks for it only where it exists.

This package's ``__init__`` imports nothing heavy, so that preprocessing starts fast.
"""

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


def teacher_auc(data: object, global_batch_size: int) -> Optional[float]:
    """``data``'s teacher AUC where it has a teacher, else None (real data has none)."""
    return data.teacher_auc(global_batch_size) if isinstance(data, HasTeacher) else None


__all__ = ["Dataset", "HasTeacher", "teacher_auc"]
