"""Feature interactions between the bottom MLP's output and the pooled embeddings.

Each takes ``dense`` (B x Db, or None when the schema has no dense features) and ``embs``
(B x sum(d_i): every sparse feature's pooled embedding side by side, in the schema's order)
and returns B x ``out_features``. ``dot`` needs one dim for all (it views ``embs`` as
B x F x D); ``cat`` and ``dcn`` take mixed dims.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torchrec.modules.crossnet import LowRankCrossNet


class DotInteraction(nn.Module):
    """DLRM's pairwise dot products among [dense, emb_1 .. emb_F], concatenated to dense.

    Only the strict upper triangle is kept (each pair once); with ``self_interaction``
    the diagonal (each vector's squared norm) is kept as well.
    """

    def __init__(self, num_sparse: int, dim: int, dense_dim: int, self_interaction: bool = False) -> None:
        super().__init__()
        self.num_sparse, self.dim = num_sparse, dim
        n = num_sparse + (1 if dense_dim else 0)
        rows, cols = torch.triu_indices(n, n, offset=0 if self_interaction else 1)
        # Pairs as positions in the flattened n x n products: index_select's backward is an
        # index_add, a third cheaper here than advanced indexing's index_put.
        self.register_buffer("pairs", rows * n + cols, persistent=False)
        self.out_features = dense_dim + rows.numel()
        self.vectors = n

    def flops_per_sample(self) -> float:
        """Forward FLOPs per sample of the products (a batched n x d by d x n matrix product), which the
        planner's calibrated dense cost counts beside the MLPs' weights (planning/job_calibration.py)."""
        return 2.0 * self.vectors * self.vectors * self.dim

    def forward(self, dense: Optional[torch.Tensor], embs: torch.Tensor) -> torch.Tensor:
        x = embs.view(-1, self.num_sparse, self.dim)
        if dense is not None:
            x = torch.cat([dense.unsqueeze(1), x], dim=1)
        z = torch.bmm(x, x.transpose(1, 2)).flatten(1).index_select(1, self.pairs)
        return torch.cat([dense, z], dim=1) if dense is not None else z


def _concat(dense: Optional[torch.Tensor], embs: torch.Tensor) -> torch.Tensor:
    return torch.cat([dense, embs], dim=1) if dense is not None else embs


class CatInteraction(nn.Module):
    """Plain concatenation of dense and all embeddings (Embedding+MLP, Deep Crossing)."""

    def __init__(self, emb_dims: Sequence[int], dense_dim: int) -> None:
        super().__init__()
        self.out_features = dense_dim + sum(emb_dims)

    def forward(self, dense: Optional[torch.Tensor], embs: torch.Tensor) -> torch.Tensor:
        return _concat(dense, embs)


class DCNInteraction(nn.Module):
    """DCNv2 low-rank cross layers over [dense, emb_1 .. emb_F] (MLPerf DLRM-DCNv2)."""

    def __init__(self, emb_dims: Sequence[int], dense_dim: int, num_layers: int, low_rank: int) -> None:
        super().__init__()
        self.out_features = dense_dim + sum(emb_dims)
        self.crossnet = LowRankCrossNet(in_features=self.out_features, num_layers=num_layers, low_rank=low_rank)

    def forward(self, dense: Optional[torch.Tensor], embs: torch.Tensor) -> torch.Tensor:
        return self.crossnet(_concat(dense, embs))


class ResidualUnit(nn.Module):
    """Deep Crossing's residual unit: ReLU(x + W2 ReLU(W1 x)); the width stays."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.inner = nn.Linear(width, hidden)
        self.outer = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.outer(torch.relu(self.inner(x))))


def build_interaction(
    kind: str,
    emb_dims: Sequence[int],
    dense_dim: int,
    self_interaction: bool = False,
    dcn_num_layers: int = 3,
    dcn_low_rank_dim: int = 512,
) -> nn.Module:
    """The interaction named by ``model.interaction`` (dims already checked by model/spec.py)."""
    if kind == "dot":
        return DotInteraction(len(emb_dims), emb_dims[0], dense_dim, self_interaction)
    if kind == "cat":
        return CatInteraction(emb_dims, dense_dim)
    if kind == "dcn":
        return DCNInteraction(emb_dims, dense_dim, dcn_num_layers, dcn_low_rank_dim)
    raise ValueError(f"unknown interaction {kind!r}; choose dot, cat or dcn")
