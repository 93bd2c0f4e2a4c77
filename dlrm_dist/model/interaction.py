"""Feature interactions between the bottom MLP's output and the pooled embeddings.

Each takes ``dense`` (B x Db) and ``sparse`` (B x F x D) and returns B x ``out_features``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.crossnet import LowRankCrossNet


class DotInteraction(nn.Module):
    """DLRM's pairwise dot products among [dense, emb_1 .. emb_F], concatenated to dense.

    Only the strict upper triangle is kept (each pair once); with ``self_interaction``
    the diagonal (each vector's squared norm) is kept as well.
    """

    def __init__(self, num_sparse: int, dim: int, self_interaction: bool = False) -> None:
        super().__init__()
        n = num_sparse + 1
        rows, cols = torch.triu_indices(n, n, offset=0 if self_interaction else 1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.out_features = dim + rows.numel()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = torch.cat([dense.unsqueeze(1), sparse], dim=1)
        z = torch.bmm(x, x.transpose(1, 2))
        return torch.cat([dense, z[:, self.rows, self.cols]], dim=1)


class CatInteraction(nn.Module):
    """Plain concatenation of dense and all embeddings (no explicit interaction)."""

    def __init__(self, num_sparse: int, dim: int, dense_dim: int) -> None:
        super().__init__()
        self.out_features = dense_dim + num_sparse * dim

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return torch.cat([dense, sparse.flatten(1)], dim=1)


class DCNInteraction(nn.Module):
    """DCNv2 low-rank cross layers over [dense, emb_1 .. emb_F] (MLPerf DLRM-DCNv2)."""

    def __init__(self, num_sparse: int, dim: int, dense_dim: int, num_layers: int, low_rank: int) -> None:
        super().__init__()
        self.out_features = dense_dim + num_sparse * dim
        self.crossnet = LowRankCrossNet(
            in_features=self.out_features, num_layers=num_layers, low_rank=low_rank
        )

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.crossnet(torch.cat([dense, sparse.flatten(1)], dim=1))


def build_interaction(
    kind: str,
    num_sparse: int,
    dim: int,
    dense_dim: int,
    self_interaction: bool = False,
    dcn_num_layers: int = 3,
    dcn_low_rank_dim: int = 512,
) -> nn.Module:
    """The interaction named by ``model.interaction``."""
    if kind == "dot":
        return DotInteraction(num_sparse, dim, self_interaction)
    if kind == "cat":
        return CatInteraction(num_sparse, dim, dense_dim)
    if kind == "dcn":
        return DCNInteraction(num_sparse, dim, dense_dim, dcn_num_layers, dcn_low_rank_dim)
    raise ValueError(f"unknown interaction {kind!r}; choose dot, cat or dcn")
