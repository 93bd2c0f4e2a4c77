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

Managed features (kind managed) take raw 64-bit ids: their table's remapper, frozen as the
trained model held it (serving/remap.py: per shard of its row-wise sharding, TorchRec's eval-mode
mapping, nothing counted or evicted), turns them into rows inside the program before the lookup,
so the program's callers send raw ids for these features and rows for the others, as the
loader hands them over in training.
"""

from __future__ import annotations

import copy
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import PoolingType

from dlrm_dist.model.dlrm import DLRM
from dlrm_dist.serving.remap import ARRAYS, freeze, remap, state_name

QUANTIZE = ("none", "int8")
_MODE = {PoolingType.SUM: "sum", PoolingType.MEAN: "mean"}
_BYTE_MODE = {"sum": 0, "mean": 1}  # the quantized op's mode codes (it honours only sum: see _int8_bag)


def quantize_rows_int8(weight: torch.Tensor) -> torch.Tensor:
    """fbgemm's fused 8-bit row-wise form of ``weight``: [rows, dim + 8] uint8 (codes, scale, bias)."""
    import fbgemm_gpu  # noqa: F401 - registers torch.ops.fbgemm

    return torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(weight.detach().float().contiguous())


class ServingDLRM(nn.Module):
    """A trained DLRM for inference on one process; see the module docstring for its inputs."""

    def __init__(self, dlrm: DLRM, quantize: str = "none", *, release_float: bool = False,
                 shards: Optional[Mapping[str, Sequence[int]]] = None) -> None:
        """``release_float`` (int8 only) frees each of ``dlrm``'s float tables once it is quantized, so
        the float and int8 tables never all exist at once; ``dlrm`` has no tables afterwards.
        ``shards``: per managed table, the row offsets of its row-wise shards in training
        ([0, ..., rows]: each shard's remapper owns a block of the id space); [0, rows] (one
        shard, the unsharded module's own remapper) for a table not named."""
        super().__init__()
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize={quantize!r}: choose one of {QUANTIZE}")
        self.quantize = quantize
        bags, configs, remappers = _tables_of(dlrm)
        table_of = {f: c.name for c in configs.values() for f in c.feature_names}
        self.feature_names = list(dlrm.feature_names)
        tables = sorted({table_of[f] for f in self.feature_names})
        # Per feature: which table (index into the buffers below), how it pools, whether it is remapped.
        self.feature_table = [tables.index(table_of[f]) for f in self.feature_names]
        self.feature_mode = [_MODE[configs[table_of[f]].pooling] for f in self.feature_names]
        self.feature_remapped = [table_of[f] in remappers for f in self.feature_names]
        self.table_names = tables
        self.remap_shards: dict[str, list[int]] = {}  # managed table -> its shards' row offsets
        self.remap_admitted: dict[str, int] = {}  # managed table -> ids admitted (and reachable)
        # The float tables are the trained model's own storage (no copy: an MLPerf-size model's
        # tables are ~100 GB); int8 ones are new, a quarter of the size.
        for i, name in enumerate(tables):
            bag = bags[name]
            weight = bag.weight.detach().float()
            self.register_buffer(f"table_{i}", quantize_rows_int8(weight) if quantize == "int8" else weight)
            if release_float and quantize == "int8":
                del weight
                bag.weight = nn.Parameter(torch.empty(bag.weight.shape, device="meta"), requires_grad=False)
            if name in remappers:
                self._freeze(i, name, remappers[name], list((shards or {}).get(name, [0, bag.weight.shape[0]])))
        # The dense part copied without the tables (the memo maps both collections to None).
        collections = (getattr(dlrm, "sparse_arch", None), getattr(dlrm, "managed_arch", None))
        dense = copy.deepcopy(dlrm, memo={id(c): None for c in collections if c is not None})
        del dense.sparse_arch, dense.managed_arch
        dense.dense_dtype = None  # inference in float32
        self.dense = dense

    def _freeze(self, index: int, name: str, mc: nn.Module, offsets: list[int]) -> None:
        frozen = freeze(name, mc._mch_sorted_raw_ids, mc._mch_remapped_ids_mapping, offsets)
        for a in ARRAYS:
            self.register_buffer(state_name(index, a), getattr(frozen, a))
        self.remap_shards[name], self.remap_admitted[name] = offsets, frozen.admitted

    def forward(self, dense: torch.Tensor, indices: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        pooled = [self._bag(f, ids, offs) for f, (ids, offs) in enumerate(zip(indices, offsets))]
        logits = self.dense.dense_forward(dense, torch.cat(pooled, dim=1))
        return torch.sigmoid(logits)

    def rows_of(self, feature: int, ids: torch.Tensor) -> torch.Tensor:
        """The table rows feature ``feature``'s ids look up: raw ids through the frozen remapper if it is managed."""
        if not self.feature_remapped[feature]:
            return ids
        t = self.feature_table[feature]
        return remap(ids, *(getattr(self, state_name(t, a)) for a in ARRAYS))

    def _bag(self, feature: int, ids: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        table = getattr(self, f"table_{self.feature_table[feature]}")
        mode = self.feature_mode[feature]
        ids = self.rows_of(feature, ids)
        if self.quantize == "int8":
            return _int8_bag(table, ids, offs, mode)
        return F.embedding_bag(ids, table, offs, mode=mode, include_last_offset=True)


def _tables_of(dlrm: DLRM) -> tuple[dict[str, nn.Module], dict[str, object], dict[str, nn.Module]]:
    """(embedding bag, config) of every table by name, plain and managed, and the managed tables' remappers."""
    managed = getattr(dlrm.managed_arch, "_embedding_module", None)  # (the managed collection's own EBC)
    collections = [c for c in (dlrm.sparse_arch, managed) if c is not None]
    bags = {name: bag for c in collections for name, bag in c.embedding_bags.items()}
    configs = {cfg.name: cfg for c in collections for cfg in c.embedding_bag_configs()}
    remappers = {} if dlrm.managed_arch is None else \
        dict(dlrm.managed_arch._managed_collision_collection._managed_collision_modules.items())
    return bags, configs, remappers


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
