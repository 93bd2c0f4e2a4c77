"""Data: the built-in synthetic generator, preprocessed Criteo days, and TorchRec batches.

Both sources offer the same interface (``Dataset``): ``batches(split, global_batch_size,
rank, world_size, num_batches, start_batch)`` yielding this rank's slice of each global
batch, ``eval_batch_count(global_batch_size)`` and ``teacher_auc(global_batch_size)``
(the best reachable AUC where it is known, else None).
"""

from typing import Iterator, Optional, Protocol

from torchrec.datasets.utils import Batch

from dlrm_dist.data.batches import SampleBlock, to_batch
from dlrm_dist.data.synthetic import SyntheticCriteo, SyntheticSpec


class Dataset(Protocol):
    feature_names: list[str]

    def batches(self, split: str, global_batch_size: int, rank: int, world_size: int,
                num_batches: Optional[int] = None, start_batch: int = 0) -> Iterator[Batch]: ...

    def eval_batch_count(self, global_batch_size: int) -> int: ...

    def teacher_auc(self, global_batch_size: int) -> Optional[float]: ...


__all__ = ["Dataset", "SampleBlock", "SyntheticCriteo", "SyntheticSpec", "to_batch"]
