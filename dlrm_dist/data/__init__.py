"""Data: the built-in synthetic generator, preprocessed Criteo days, schema-driven columnar
directories, and TorchRec batches.

Every source offers the same interface (``Dataset``): ``batches(split, global_batch_size,
rank, world_size, num_batches, start_batch)`` yielding this rank's slice of each global
batch, ``eval_batch_count(global_batch_size)``, ``teacher_auc(global_batch_size)`` (the
best reachable AUC where it is known, else None) and ``bag_lengths()`` (mean ids per
sample of each feature, for the planner).

This package's ``__init__`` imports nothing heavy, so that preprocessing starts fast.
"""

from typing import TYPE_CHECKING, Iterator, Optional, Protocol

if TYPE_CHECKING:
    from torchrec.datasets.utils import Batch


class Dataset(Protocol):
    feature_names: list[str]

    def batches(self, split: str, global_batch_size: int, rank: int, world_size: int,
                num_batches: Optional[int] = None, start_batch: int = 0) -> Iterator["Batch"]: ...

    def eval_batch_count(self, global_batch_size: int) -> int: ...

    def teacher_auc(self, global_batch_size: int) -> Optional[float]: ...

    def bag_lengths(self) -> dict[str, float]: ...


__all__ = ["Dataset"]
