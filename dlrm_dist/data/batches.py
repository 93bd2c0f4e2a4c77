"""A block of samples in numpy and its conversion to a TorchRec ``Batch``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch


@dataclass
class SampleBlock:
    """``n`` samples: dense (n x 13 float32), one bag per table, labels (n,)."""

    dense: np.ndarray
    values: list[np.ndarray]  # per table: the ids of all bags, sample by sample
    lengths: list[np.ndarray]  # per table: (n,) bag lengths
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def to_batch(block: SampleBlock, feature_names: list[str]) -> Batch:
    """A TorchRec ``Batch``; the KJT is key-major (all bags of feature 0, then feature 1, ...)."""
    kjt = KeyedJaggedTensor(
        keys=feature_names,
        values=torch.from_numpy(np.concatenate(block.values).astype(np.int64, copy=False)),
        lengths=torch.from_numpy(np.concatenate(block.lengths).astype(np.int32, copy=False)),
    )
    return Batch(
        dense_features=torch.from_numpy(np.ascontiguousarray(block.dense, dtype=np.float32)),
        sparse_features=kjt,
        labels=torch.from_numpy(block.labels.astype(np.float32, copy=False)),
    )
