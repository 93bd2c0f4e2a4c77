"""The inference module: one embedding bag per feature (float or int8 row-wise) and the trained dense part.

Inputs (what ``torch.export`` traces and a server sends), for a batch of B samples:

    dense:   float32 [B, number of dense features]   (already transformed, as in training)
    indices: one int64 tensor per sparse feature, in ``feature_names`` order: the ids of all
             B bags of that feature, concatenated
    offsets: one int64 tensor [B + 1] per sparse feature: bag b is indices[offsets[b]:offsets[b+1]]

and it returns the click probability, float32 [B]. Features that share a table look it up
alike; each feature pools (sum or mean) as it did in training.

int8: each table row stored as int8 codes with a float scale and bias (fbgemm's fused
8-bit row-wise format, quantized by fbgemm), looked up by PyTorch's fbgemm-backed
``quantized::embedding_bag_byte_rowwise_offsets``, so the exported program needs only torch.
That op sums every bag whatever mode it is given; mean-pooled features divide by the bag's
length themselves (``_int8_bag``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import PoolingType

from dlrm_dist.model.dlrm import DLRM

QUANTIZE = ("none", "int8")
_MODE = {PoolingType.SUM: "sum", PoolingType.MEAN: "mean"}
_BYTE_MODE = {"sum": 0, "mean": 1}  # the quantized op's mode codes (it honours only sum: see _int8_bag)


def quantize_rows_int8(weight: torch.Tensor) -> torch.Tensor:
    """fbgemm's fused 8-bit row-wise form of ``weight``: [rows, dim + 8] uint8 (codes, scale, bias)."""
    import fbgemm_gpu  # noqa: F401 - registers torch.ops.fbgemm

    return torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(weight.detach().float().contiguous())


class ServingDLRM(nn.Module):
    """A trained DLRM for inference on one process; see the module docstring for its inputs."""

    def __init__(self, dlrm: DLRM, quantize: str = "none", *, release_float: bool = False) -> None:
        """``release_float`` (int8 only) frees each of ``dlrm``'s float tables once it is quantized, so
        the float and int8 tables never all exist at once; ``dlrm`` has no tables afterwards."""
        super().__init__()
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize={quantize!r}: choose one of {QUANTIZE}")
        self.quantize = quantize
        configs = {c.name: c for c in dlrm.sparse_arch.embedding_bag_configs()}
        table_of = {f: c.name for c in configs.values() for f in c.feature_names}
        self.feature_names = list(dlrm.feature_names)
        tables = sorted({table_of[f] for f in self.feature_names})
        # Per feature: which table (index into the buffers below) and how it pools.
        self.feature_table = [tables.index(table_of[f]) for f in self.feature_names]
        self.feature_mode = [_MODE[configs[table_of[f]].pooling] for f in self.feature_names]
        self.table_names = tables
        # The float tables are the trained model's own storage (no copy: an MLPerf-size model's
        # tables are ~100 GB); int8 ones are new, a quarter of the size.
        for i, name in enumerate(tables):
            bag = dlrm.sparse_arch.embedding_bags[name]
            weight = bag.weight.detach().float()
            self.register_buffer(f"table_{i}", quantize_rows_int8(weight) if quantize == "int8" else weight)
            if release_float and quantize == "int8":
                del weight
                bag.weight = nn.Parameter(torch.empty(bag.weight.shape, device="meta"), requires_grad=False)
        # The dense part copied without the tables (the memo maps the sparse arch to None).
        dense = copy.deepcopy(dlrm, memo={id(dlrm.sparse_arch): None})
        del dense.sparse_arch
        dense.dense_dtype = None  # inference in float32
        self.dense = dense

    def forward(self, dense: torch.Tensor, indices: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        pooled = [self._bag(f, ids, offs) for f, (ids, offs) in enumerate(zip(indices, offsets))]
        logits = self.dense.dense_forward(dense, torch.cat(pooled, dim=1))
        return torch.sigmoid(logits)

    def _bag(self, feature: int, ids: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        table = getattr(self, f"table_{self.feature_table[feature]}")
        mode = self.feature_mode[feature]
        if self.quantize == "int8":
            return _int8_bag(table, ids, offs, mode)
        return F.embedding_bag(ids, table, offs, mode=mode, include_last_offset=True)


def _int8_bag(table: torch.Tensor, ids: torch.Tensor, offs: torch.Tensor, mode: str) -> torch.Tensor:
    """Bags of an int8 row-wise table, pooled by ``mode`` as ``F.embedding_bag`` pools float rows.

    The quantized op takes a mode argument but sums whatever it is given (measured on torch
    2.13: k copies of one id give k times its row), so a mean is the sum divided by the bag's
    length here; an empty bag stays zero, as embedding_bag's mean of nothing is.
    """
    pooled = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
        table, ids, offs, False, _BYTE_MODE["sum"], False, None, None, True)
    if mode == "sum":
        return pooled
    lengths = (offs[1:] - offs[:-1]).clamp(min=1).to(pooled.dtype)
    return pooled / lengths.unsqueeze(1)
