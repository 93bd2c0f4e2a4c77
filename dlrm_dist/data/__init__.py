"""Data: the built-in synthetic Criteo-shaped generator and conversion to TorchRec batches."""

from dlrm_dist.data.batches import SampleBlock, to_batch
from dlrm_dist.data.synthetic import SyntheticCriteo, SyntheticSpec

__all__ = ["SampleBlock", "SyntheticCriteo", "SyntheticSpec", "to_batch"]
