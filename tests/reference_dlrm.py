"""An independent, single-process, plain-PyTorch DLRM: the reference for equivalence tests.

No TorchRec: nn.EmbeddingBag (sum or mean pooling, one per table; a shared table serves
several features), nn.Linear, explicit pairwise dot products (pairs (i, j), i < j, in
row-major order over [bottom output, emb_1 .. emb_F]) or a plain concatenation, and
hand-written optimizer updates, so that nothing here shares code with dlrm_dist's model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _mlp(sizes: list[int], relu_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[k], sizes[k + 1]))
        if k < len(sizes) - 2 or relu_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ReferenceDLRM(nn.Module):
    """``tables``: (rows, dim, "sum"|"mean") each; ``feature_table[f]``: the table feature f looks up."""

    def __init__(self, tables: list[tuple[int, int, str]], feature_table: list[int], bottom: list[int],
                 top: list[int], interaction: str = "dot") -> None:
        super().__init__()
        self.tables = nn.ModuleList([nn.EmbeddingBag(n, d, mode=mode) for n, d, mode in tables])
        self.feature_table = feature_table
        self.bottom = _mlp(bottom, relu_last=True) if len(bottom) > 1 else None
        self.interaction = interaction
        dense_out = bottom[-1] if bottom else 0
        if interaction == "dot":
            n = len(feature_table) + (1 if bottom else 0)
            self.pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
            width = dense_out + len(self.pairs)
        else:
            width = dense_out + sum(tables[t][1] for t in feature_table)
        self.top = _mlp([width] + top, relu_last=False)
        self.has_dense = bool(bottom)

    def forward(self, dense: torch.Tensor, bags: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        x = [self.bottom(dense) if self.bottom is not None else dense] if self.has_dense else []
        vectors = x + [self.tables[t](ids, offsets) for t, (ids, offsets) in zip(self.feature_table, bags)]
        if self.interaction == "dot":
            dots = [(vectors[i] * vectors[j]).sum(dim=1, keepdim=True) for i, j in self.pairs]
            return self.top(torch.cat(x + dots, dim=1)).squeeze(1)
        return self.top(torch.cat(vectors, dim=1)).squeeze(1)

    def load_from(self, state: dict[str, torch.Tensor], table_names: list[str]) -> None:
        """Copies weights from a gathered dlrm_dist state dict (keys matched by role)."""
        with torch.no_grad():
            for k, name in enumerate(table_names):
                self.tables[k].weight.copy_(state[f"model.sparse_arch.embedding_bags.{name}.weight"])
            for prefix, seq in (("model.dense_arch", self.bottom or []), ("model.over_arch", self.top)):
                for idx, layer in enumerate(seq):
                    if isinstance(layer, nn.Linear):
                        layer.weight.copy_(state[f"{prefix}.{idx}.weight"])
                        layer.bias.copy_(state[f"{prefix}.{idx}.bias"])


def bags_from_block(block) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, offsets) per feature from a SampleBlock's flat values and lengths."""
    out = []
    for values, lengths in zip(block.values, block.lengths):
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        out.append((torch.from_numpy(values.astype(np.int64)), torch.from_numpy(offsets.astype(np.int64))))
    return out


class ReferenceOptimizer:
    """Plain update rules: sgd, adagrad (elementwise) and rowwise_adagrad (embeddings only)."""

    def __init__(self, kind_emb: str, kind_dense: str, model: ReferenceDLRM, lr_emb: float, lr_dense: float, eps: float) -> None:
        self.eps = eps
        emb = [t.weight for t in model.tables]
        dense = [p for n, p in model.named_parameters() if not n.startswith("tables.")]
        self.groups = [(kind_emb, lr_emb, emb, True), (kind_dense, lr_dense, dense, False)]
        self.state: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        for kind, peak_lr, params, is_emb in self.groups:
            lr = peak_lr * lr_factor
            for p in params:
                g = p.grad
                if kind == "sgd":
                    p.sub_(lr * g)
                elif kind == "adagrad":
                    s = self.state.setdefault(id(p), torch.zeros_like(p))
                    s.add_(g * g)
                    p.sub_(lr * g / (s.sqrt() + self.eps))
                elif kind == "rowwise_adagrad" and is_emb:
                    s = self.state.setdefault(id(p), torch.zeros(p.shape[0], 1))
                    s.add_((g * g).mean(dim=1, keepdim=True))
                    p.sub_(lr * g / (s.sqrt() + self.eps))
                else:
                    raise ValueError(f"reference has no {kind} for {'embeddings' if is_emb else 'dense'}")

    def zero_grad(self) -> None:
        for _, _, params, _ in self.groups:
            for p in params:
                p.grad = None


def train_reference(model: ReferenceDLRM, opt: ReferenceOptimizer, blocks: list, lr_factors: list[float]) -> list[float]:
    """One step per SampleBlock (a whole global batch) at the given rate factors; returns the losses."""
    losses = []
    for block, factor in zip(blocks, lr_factors):
        opt.zero_grad()
        logits = model(torch.from_numpy(block.dense), bags_from_block(block))
        loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(block.labels))
        loss.backward()
        opt.step(factor)
        losses.append(loss.item())
    return losses
