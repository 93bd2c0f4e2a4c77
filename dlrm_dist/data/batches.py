"""A block of samples in numpy, its conversion to a TorchRec ``Batch``, and the batch order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch


@dataclass
class SampleBlock:
    """``n`` samples: dense (n x num_dense float32), one bag per sparse feature, labels (n,)."""

    dense: np.ndarray
    values: list[np.ndarray]  # per feature: the ids of all bags, sample by sample
    lengths: list[np.ndarray]  # per feature: (n,) bag lengths
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def to_batch(block: SampleBlock, feature_names: list[str]) -> Batch:
    """A TorchRec ``Batch``; the KJT is key-major (all bags of feature 0, then feature 1, ...)."""
    kjt = KeyedJaggedTensor(
        keys=feature_names,
        values=_tensor(np.concatenate(block.values), np.int64),
        lengths=_tensor(np.concatenate(block.lengths), np.int32),
    )
    return Batch(dense_features=_tensor(block.dense, np.float32), sparse_features=kjt,
                 labels=_tensor(block.labels, np.float32))


def _tensor(a: np.ndarray, dtype: type) -> torch.Tensor:
    """A tensor sharing ``a``'s memory when it can: a read-only array (a slice of a memory-mapped
    file) is copied, since torch assumes every tensor may be written."""
    return torch.from_numpy(np.require(a, dtype=dtype, requirements=["C", "W"]))


def batch_position(b: int, per_epoch: int, seed: int, shuffle: bool) -> int:
    """Which batch of the split global batch ``b`` reads: epoch-wise seeded permutations.

    The permutation depends on (seed, epoch) only, so every world size visits the same
    global batches in the same order.
    """
    if not shuffle:
        return b % per_epoch
    epoch, i = divmod(b, per_epoch)
    return int(np.random.default_rng([seed, epoch]).permutation(per_epoch)[i])
