"""Embedding table definitions: one table per sparse feature, named as TorchRec's DLRM does."""

from __future__ import annotations

from torchrec import EmbeddingBagConfig
from torchrec.modules.embedding_configs import PoolingType


def feature_names(num_tables: int) -> list[str]:
    """Sparse feature names ``cat_0 .. cat_{n-1}`` (TorchRec's Criteo naming)."""
    return [f"cat_{i}" for i in range(num_tables)]


def make_tables(table_sizes: list[int], embedding_dim: int) -> list[EmbeddingBagConfig]:
    """One sum-pooled table ``t_cat_i`` per feature ``cat_i``."""
    return [
        EmbeddingBagConfig(
            name=f"t_{name}",
            embedding_dim=embedding_dim,
            num_embeddings=rows,
            feature_names=[name],
            pooling=PoolingType.SUM,
        )
        for name, rows in zip(feature_names(len(table_sizes)), table_sizes)
    ]
