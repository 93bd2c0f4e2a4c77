"""Embedding table definitions for TorchRec, from the schema's tables."""

from __future__ import annotations

from typing import Sequence

from torchrec import EmbeddingBagConfig
from torchrec.modules.embedding_configs import PoolingType

from dlrm_dist.features.schema import TableDef

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


def make_tables(tables: Sequence[TableDef]) -> list[EmbeddingBagConfig]:
    """One EmbeddingBagConfig per table; a shared table lists all its features."""
    return [
        EmbeddingBagConfig(name=t.name, embedding_dim=t.dim, num_embeddings=t.rows,
                           feature_names=list(t.features), pooling=_POOLING[t.pooling])
        for t in tables
    ]
