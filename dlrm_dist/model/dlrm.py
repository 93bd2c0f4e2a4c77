"""The DLRM module (Naumov et al. 2019) and its training wrapper.

    dense ──► bottom MLP ──┐
                           ├─► interaction ──► top MLP ──► logit
    sparse ─► EmbeddingBagCollection (pooled per feature) ┘

The EmbeddingBagCollection is built on the meta device: DistributedModelParallel
materialises only each rank's shards. Embeddings are looked up by feature name, because
a sharded collection returns its keys in another order than the unsharded one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.datasets.utils import Batch

from dlrm_dist.config.arch import parse_mlp
from dlrm_dist.config.schema import ModelConfig
from dlrm_dist.model.interaction import build_interaction
from dlrm_dist.model.tables import make_tables


def mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
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
        bottom_mlp: list[int],
        top_mlp: list[int],
        interaction: nn.Module,
        device: torch.device = torch.device("meta"),
    ) -> None:
        super().__init__()
        self.feature_names = [f for t in tables for f in t.feature_names]
        self.sparse_arch = EmbeddingBagCollection(tables=tables, device=device)
        self.dense_arch = mlp(bottom_mlp, last_activation=True)
        self.interaction = interaction
        self.over_arch = mlp([interaction.out_features] + top_mlp, last_activation=False)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.sparse_arch(sparse)
        emb = torch.stack([pooled[f] for f in self.feature_names], dim=1)
        x = self.interaction(self.dense_arch(dense), emb)
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


def build_model(cfg: ModelConfig, seed: int, device: torch.device = torch.device("meta")) -> DLRMTrain:
    """The model of ``cfg``; MLP weights are drawn from ``seed`` (same on every rank)."""
    bottom = parse_mlp(cfg.bottom_mlp, "model.bottom_mlp")
    top = parse_mlp(cfg.top_mlp, "model.top_mlp")
    tables = make_tables(cfg.table_sizes, cfg.embedding_dim)
    # Dense weights come from `seed` alone, so every rank (and every world size) starts alike.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        interaction = build_interaction(
            cfg.interaction,
            num_sparse=len(tables),
            dim=cfg.embedding_dim,
            dense_dim=bottom[-1],
            self_interaction=cfg.dot_self_interaction,
            dcn_num_layers=cfg.dcn_num_layers,
            dcn_low_rank_dim=cfg.dcn_low_rank_dim,
        )
        model = DLRM(tables, bottom, top, interaction, device=device)
    return DLRMTrain(model, cfg.loss)
