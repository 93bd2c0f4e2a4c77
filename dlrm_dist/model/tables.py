"""Embedding table definitions for TorchRec, from the schema's tables, and the remappers of
managed tables (TorchRec's managed-collision modules)."""

from __future__ import annotations

from typing import Sequence

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.modules.mc_modules import (
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHEvictionPolicy,
    MCHManagedCollisionModule,
)

from dlrm_dist.features.schema import MANAGED_ID_SPACE, Remapper, TableDef

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


def make_tables(tables: Sequence[TableDef]) -> list[EmbeddingBagConfig]:
    """One EmbeddingBagConfig per table; a shared table lists all its features."""
    return [
        EmbeddingBagConfig(name=t.name, embedding_dim=t.dim, num_embeddings=t.rows,
                           feature_names=list(t.features), pooling=_POOLING[t.pooling],
                           **({"init_fn": zero_rows} if t.remapper is not None else {}))
        for t in tables
    ]


def zero_rows(rows: torch.Tensor) -> torch.Tensor:
    """A managed table's ``init_fn``: the sharded collection rewrites the rows of evicted ids with
    it, so a newly admitted id starts from zeros (deterministic on every rank and world size;
    TorchRec's default would draw from the global RNG). Initial weights are model/init.py's."""
    return torch.zeros_like(rows)


def eviction_policy(r: Remapper) -> MCHEvictionPolicy:
    """TorchRec's policy for ``r``: LFU evicts the id seen least often, LRU the one seen longest ago."""
    return LRU_EvictionPolicy(decay_exponent=r.decay_exponent) if r.eviction == "lru" else LFU_EvictionPolicy()


def remapper(t: TableDef, device: torch.device) -> MCHManagedCollisionModule:
    """``t``'s remapper: raw ids in [0, 2**63 - 1) to ``t.rows`` rows (the last row takes ids not
    admitted yet); every ``interval`` training steps it admits the new ids seen since, evicting
    the coldest. Raw ids arrive hashed already (preprocessing), so no input hash here."""
    return MCHManagedCollisionModule(
        zch_size=t.rows, device=device, eviction_policy=eviction_policy(t.remapper),
        eviction_interval=t.remapper.interval, input_hash_size=MANAGED_ID_SPACE, name=t.name,
    )


def managed_collection(tables: Sequence[TableDef], device: torch.device) -> ManagedCollisionEmbeddingBagCollection:
    """The managed tables as TorchRec's ManagedCollisionEmbeddingBagCollection: remappers, then an
    EmbeddingBagCollection over the rows they give (its sharder shards both, row-wise)."""
    configs = make_tables(tables)
    mcc = ManagedCollisionCollection({t.name: remapper(t, device) for t in tables}, configs)
    return ManagedCollisionEmbeddingBagCollection(EmbeddingBagCollection(tables=configs, device=device), mcc)
