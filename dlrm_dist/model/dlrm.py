"""The DLRM module (Naumov et al. 2019), the Embedding+MLP preset, and the training wrapper.

    dense ──► bottom MLP ──┐
                           ├─► interaction ──► [residual units] ──► top MLP ──► logit
    sparse ─► EmbeddingBagCollection (pooled per feature) ┘

Embedding+MLP (Deep Crossing) is the same module with the ``cat`` interaction, no bottom
layers (dense features enter the concatenation as they are) and optional residual units.
The EmbeddingBagCollection is built on the meta device: DistributedModelParallel
materialises only each rank's shards. Embeddings are looked up by feature name, because
a sharded collection returns its keys in another order than the unsharded one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.datasets.utils import Batch

from dlrm_dist.model.interaction import ResidualUnit, build_interaction
from dlrm_dist.model.spec import ModelSpec
from dlrm_dist.model.tables import make_tables


def mlp(sizes: Sequence[int], last_activation: bool) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with ReLU between (and after, if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """Bottom MLP, embedding bags, interaction, top MLP; returns one logit per sample."""

    def __init__(
        self,
        tables: list[EmbeddingBagConfig],
        feature_names: Sequence[str],
        bottom_mlp: Sequence[int],
        top_mlp: Sequence[int],
        interaction: nn.Module,
        residual: Optional[nn.Module] = None,
        device: torch.device = torch.device("meta"),
    ) -> None:
        super().__init__()
        self.feature_names = list(feature_names)
        self.sparse_arch = EmbeddingBagCollection(tables=tables, device=device)
        # No bottom MLP without dense features; an empty Sequential passes them through.
        self.dense_arch = mlp(bottom_mlp, last_activation=True) if bottom_mlp else None
        self.interaction = interaction
        if residual is not None:
            self.residual_arch = residual
        self.over_arch = mlp([interaction.out_features] + list(top_mlp), last_activation=False)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.sparse_arch(sparse).to_dict()
        embs = [pooled[f] for f in self.feature_names]
        x = self.interaction(self.dense_arch(dense) if self.dense_arch is not None else None, embs)
        if hasattr(self, "residual_arch"):
            x = self.residual_arch(x)
        return self.over_arch(x).squeeze(-1)


class DLRMTrain(nn.Module):
    """Adds the loss; returns ``(loss, (loss, logits, labels))`` as TorchRec's pipelines expect."""

    def __init__(self, model: DLRM, loss: str = "bce") -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        logits = self.model(batch.dense_features, batch.sparse_features)
        labels = batch.labels.float()
        if self.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        else:
            loss = F.mse_loss(torch.sigmoid(logits), labels)
        return loss, (loss.detach(), logits.detach(), labels.detach())


def build_model(spec: ModelSpec, seed: int, device: torch.device = torch.device("meta")) -> DLRMTrain:
    """The model of ``spec``; MLP weights are drawn from ``seed`` (same on every rank)."""
    # Dense weights come from `seed` alone, so every rank (and every world size) starts alike.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        interaction = build_interaction(
            spec.interaction, spec.emb_dims, spec.dense_out, self_interaction=spec.dot_self_interaction,
            dcn_num_layers=spec.dcn_num_layers, dcn_low_rank_dim=spec.dcn_low_rank_dim,
        )
        residual = None
        if spec.residual_units:
            width = interaction.out_features
            residual = nn.Sequential(*[ResidualUnit(width, spec.residual_hidden) for _ in range(spec.residual_units)])
        model = DLRM(make_tables(spec.tables), spec.feature_names, spec.bottom, spec.top, interaction,
                     residual, device=device)
    return DLRMTrain(model, spec.loss)
