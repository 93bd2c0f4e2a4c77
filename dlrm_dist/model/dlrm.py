"""The DLRM module (Naumov et al. 2019), the Embedding+MLP preset, and the training wrapper.

    dense ──► bottom MLP ──┐
                           ├─► interaction ──► [residual units] ──► top MLP ──► logit
    sparse ─► EmbeddingBagCollection (pooled per feature) ┘
              [managed features: remapper (raw id -> row) ─► EmbeddingBagCollection]

Embedding+MLP (Deep Crossing) is the same module with the ``cat`` interaction, no bottom
layers (dense features enter the concatenation as they are) and optional residual units.
The EmbeddingBagCollection is built on the meta device: DistributedModelParallel
materialises only each rank's shards. Embeddings are looked up by feature name, because
a sharded collection returns its keys in another order than the unsharded one.

Managed features (kind managed) carry raw ids: their tables live in TorchRec's
ManagedCollisionEmbeddingBagCollection (``managed_arch``), whose remappers map each raw id
to a row before the lookup; the other tables stay in ``sparse_arch``. The forward splits the
batch's KeyedJaggedTensor by key between the two and joins their pooled outputs.
"""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor
from torchrec.datasets.utils import Batch
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection

from dlrm_dist.model.interaction import ResidualUnit, build_interaction
from dlrm_dist.model.spec import ModelSpec
from dlrm_dist.model.tables import make_tables, managed_collection


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
        managed: Optional[ManagedCollisionEmbeddingBagCollection] = None,
    ) -> None:
        super().__init__()
        self.feature_names = list(feature_names)
        self._order = tuple(feature_names)
        self._gathers: dict[tuple[str, ...], torch.Tensor] = {}
        # (an EmbeddingBagCollection needs a table: none when every table is managed)
        self.sparse_arch = EmbeddingBagCollection(tables=tables, device=device) if tables else None
        self.managed_arch = managed
        plain_keys = tuple(f for t in tables for f in t.feature_names)
        # the managed collection puts its keys in its own order (TorchRec permutes them on first use)
        self._split = (plain_keys, tuple(f for f in feature_names if f not in plain_keys))
        self._permutes: dict[tuple[str, ...], list[int]] = {}
        # No bottom MLP without dense features; an empty Sequential passes them through.
        self.dense_arch = mlp(bottom_mlp, last_activation=True) if bottom_mlp else None
        self.interaction = interaction
        if residual is not None:
            self.residual_arch = residual
        self.over_arch = mlp([interaction.out_features] + list(top_mlp), last_activation=False)
        # Mixed precision for the dense part only (train.mixed_precision); None = float32.
        # Plain attributes, not read from tensors: TorchRec's pipeline traces this forward.
        self.dense_dtype: Optional[torch.dtype] = None
        self.autocast_device = "cpu"

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        embs = self.ordered(self.lookup(sparse))
        if self.dense_dtype is None:
            return self.dense_forward(dense, embs)
        with torch.autocast(self.autocast_device, dtype=self.dense_dtype):
            return self.dense_forward(dense, embs).float()

    def lookup(self, sparse: KeyedJaggedTensor) -> KeyedTensor:
        """Every feature's pooled embedding: plain tables looked up as they are, managed ones
        after their remappers (which, in training, also count the ids to admit)."""
        if self.managed_arch is None:
            return self.sparse_arch(sparse)
        plain, managed = _split_keys(sparse, self._split, self._permutes)
        pooled, _ = self.managed_arch(managed)
        if self.sparse_arch is None:
            return pooled
        return _joined(self.sparse_arch(plain), pooled)

    def dense_forward(self, dense: torch.Tensor, embs: torch.Tensor) -> torch.Tensor:
        """Bottom MLP, interaction, residual units, top MLP: one logit per sample."""
        x = self.interaction(self.dense_arch(dense) if self.dense_arch is not None else None, embs)
        if hasattr(self, "residual_arch"):
            x = self.residual_arch(x)
        return self.over_arch(x).squeeze(-1)

    def use_mixed_precision(self, dtype: Optional[torch.dtype], device_type: str) -> None:
        """Runs the dense part under autocast to ``dtype`` on ``device_type`` (None: float32)."""
        self.dense_dtype, self.autocast_device = dtype, device_type

    def dense_modules(self) -> list[nn.Module]:
        """The data-parallel part (bottom MLP, interaction, residual units, top MLP), in forward order.

        Everything but ``sparse_arch``: DistributedModelParallel replicates these on every rank
        (DDP) while it shards the tables by the plan.
        """
        parts = (self.dense_arch, self.interaction, getattr(self, "residual_arch", None), self.over_arch)
        return [m for m in parts if m is not None]

    def ordered(self, pooled: KeyedTensor) -> torch.Tensor:
        """The pooled embeddings as one B x sum(dims) tensor in ``feature_names`` order."""
        return _in_order(pooled, self._order, self._gathers)


@torch.fx.wrap  # opaque to TorchRec's pipeline tracer, which cannot iterate a traced KeyedTensor
def _in_order(pooled: KeyedTensor, order: tuple[str, ...], gathers: dict[tuple[str, ...], torch.Tensor]) -> torch.Tensor:
    """``pooled``'s values with their columns in feature ``order``.

    A sharded collection returns its keys in another order than the unsharded one (and than
    the schema's). One column gather puts them in order; slicing feature by feature instead
    costs a B x sum(dims) zero-filled gradient per feature in backward. The gather's indices
    depend only on the key order, so they are built once per order (cached in ``gathers``).
    """
    keys = tuple(pooled.keys())
    values = pooled.values()
    if keys == order:
        return values
    index = gathers.get(keys)
    if index is None:
        offsets = dict(zip(keys, pooled.offset_per_key()))
        widths = dict(zip(keys, pooled.length_per_key()))
        cols = [c for f in order for c in range(offsets[f], offsets[f] + widths[f])]
        index = gathers[keys] = torch.tensor(cols, dtype=torch.long, device=values.device)
    return values.index_select(1, index)


@torch.fx.wrap
def _split_keys(sparse: KeyedJaggedTensor, split: tuple[tuple[str, ...], tuple[str, ...]],
                permutes: dict[tuple[str, ...], list[int]]) -> list[KeyedJaggedTensor]:
    """``sparse`` as two KeyedJaggedTensors: the plain tables' keys, then the managed ones'
    (the permutation depends only on the key order: built once per order)."""
    keys = tuple(sparse.keys())
    index = permutes.get(keys)
    if index is None:
        index = permutes[keys] = [keys.index(k) for k in split[0] + split[1]]
    return sparse.permute(index).split([len(split[0]), len(split[1])])


@torch.fx.wrap
def _joined(a: KeyedTensor, b: KeyedTensor) -> KeyedTensor:
    """Two pooled KeyedTensors as one (keys of ``a`` then ``b``): ``ordered`` then gathers by name."""
    return KeyedTensor(keys=a.keys() + b.keys(), length_per_key=a.length_per_key() + b.length_per_key(),
                       values=torch.cat([a.values(), b.values()], dim=1))


class DLRMTrain(nn.Module):
    """Adds the loss; returns ``(loss, (loss, logits, labels))`` as TorchRec's pipelines expect.

    The trainer, the parallel wrapping and the planner's CLIs know this wrapper only through what
    it says here: where its tables are (``TABLES_PATH``), which of its parts are data-parallel
    (``dense_modules``) and how to run the dense part in lower precision.
    """

    # The module path of the EmbeddingBagCollection within this wrapper: a sharding plan made
    # without a model (``dlrm-plan make``) is keyed by it, and state-dict keys start with it.
    TABLES_PATH: ClassVar[str] = "model.sparse_arch"

    def __init__(self, model: DLRM, loss: str = "bce") -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    @property
    def tables(self) -> EmbeddingBagCollection:
        """The embedding tables (at ``TABLES_PATH``)."""
        return self.model.sparse_arch

    def dense_modules(self) -> list[nn.Module]:
        """The data-parallel part of the model (DLRM.dense_modules)."""
        return self.model.dense_modules()

    def use_mixed_precision(self, dtype: Optional[torch.dtype], device_type: str) -> None:
        """Runs the dense part under autocast to ``dtype`` on ``device_type`` (None: float32)."""
        self.model.use_mixed_precision(dtype, device_type)

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
    with torch.random.fork_rng(devices=[]):  # only the CPU seed: no CUDA context on GPU 0 from every rank
        torch.manual_seed(seed)
        interaction = build_interaction(
            spec.interaction, spec.emb_dims, spec.dense_out, self_interaction=spec.dot_self_interaction,
            dcn_num_layers=spec.dcn_num_layers, dcn_low_rank_dim=spec.dcn_low_rank_dim,
        )
        residual = None
        if spec.residual_units:
            width = interaction.out_features
            residual = nn.Sequential(*[ResidualUnit(width, spec.residual_hidden) for _ in range(spec.residual_units)])
        plain = [t for t in spec.tables if t.remapper is None]
        managed = [t for t in spec.tables if t.remapper is not None]
        model = DLRM(make_tables(plain), spec.feature_names, spec.bottom, spec.top, interaction, residual,
                     device=device, managed=managed_collection(managed, device) if managed else None)
    return DLRMTrain(model, spec.loss)
