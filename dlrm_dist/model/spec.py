"""The model's resolved shape: what ModelConfig says, completed and checked against the schema.

Pure Python (no torch): the plan tools and pre-launch checks use it without building a model.
Every disagreement between the architecture and the data is named here, before any process
group exists: a bottom MLP whose input width is not the number of dense features, ``dot``
over tables of different dims, a dim fbgemm's fused kernel cannot take.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlrm_dist.config.arch import parse_mlp
from dlrm_dist.config.errors import ConfigError
from dlrm_dist.config.sections import Config, ModelConfig
from dlrm_dist.features.schema import FeatureSchema, TableDef, from_dict

ARCHS = ("dlrm", "embedding_mlp")
# DLRM's bottom MLP between the dense input and the embedding dim, when none is given.
DEFAULT_BOTTOM_HIDDEN = (512, 256, 64)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the model; ``bottom`` is empty when there are no dense features."""

    tables: tuple[TableDef, ...]
    feature_names: tuple[str, ...]  # the order embeddings enter the interaction (the schema's)
    bottom: tuple[int, ...]
    top: tuple[int, ...]
    interaction: str
    dot_self_interaction: bool
    dcn_num_layers: int
    dcn_low_rank_dim: int
    residual_units: int
    residual_hidden: int
    loss: str

    @property
    def emb_dims(self) -> list[int]:
        """Embedding width of each feature, in ``feature_names`` order."""
        by_feature = {f: t.dim for t in self.tables for f in t.features}
        return [by_feature[f] for f in self.feature_names]

    @property
    def dense_out(self) -> int:
        return self.bottom[-1] if self.bottom else 0


def _bottom(cfg: ModelConfig, schema: FeatureSchema, dim: int) -> list[int]:
    n = schema.num_dense
    if cfg.bottom_mlp is None or str(cfg.bottom_mlp).strip() == "":
        if n == 0:
            return []
        if cfg.arch == "embedding_mlp":
            return [n]  # Deep Crossing: dense features enter the concatenation as they are
        return [n, *DEFAULT_BOTTOM_HIDDEN, dim]
    bottom = parse_mlp(cfg.bottom_mlp, "model.bottom_mlp")
    if n == 0:
        raise ConfigError(f"model.bottom_mlp={cfg.bottom_mlp!r} is set, but schema {schema.name!r} has no "
                          "dense features: leave model.bottom_mlp unset")
    if bottom[0] != n:
        raise ConfigError(
            f"model.bottom_mlp={cfg.bottom_mlp!r} starts with {bottom[0]}, but schema {schema.name!r} has "
            f"{n} dense feature(s): write '{n}-...'"
        )
    return bottom


def _check_dims(interaction: str, tables: list[TableDef], bottom: list[int]) -> None:
    dims = {t.name: t.dim for t in tables}
    if interaction == "dot":
        if len(set(dims.values())) > 1:
            listed = ", ".join(f"{n}={d}" for n, d in dims.items())
            raise ConfigError(f"model.interaction=dot needs one embedding dim for every table, got {listed}; "
                              "use cat or dcn for mixed dims, or give every table the same dim")
        dim = next(iter(dims.values()))
        if bottom and bottom[-1] != dim:
            raise ConfigError(f"model.bottom_mlp ends in {bottom[-1]}, but the dot interaction needs it to "
                              f"equal the embedding dim {dim}")


def resolve_model(cfg: ModelConfig, schema: FeatureSchema) -> ModelSpec:
    """The model ``cfg`` describes over ``schema``'s features; raises ConfigError naming what disagrees."""
    if cfg.arch not in ARCHS:
        raise ConfigError(f"model.arch={cfg.arch!r} is not valid; choose one of: {', '.join(ARCHS)}")
    interaction = "cat" if cfg.arch == "embedding_mlp" else cfg.interaction
    if cfg.arch == "embedding_mlp" and cfg.interaction not in ("cat", "dot"):
        raise ConfigError(f"model.arch=embedding_mlp concatenates (cat); model.interaction={cfg.interaction!r} "
                          "contradicts it")
    tables = schema.tables(cfg.embedding_dim)
    bottom = _bottom(cfg, schema, tables[0].dim if interaction == "dot" else cfg.embedding_dim)
    _check_dims(interaction, tables, bottom)
    top = parse_mlp(cfg.top_mlp, "model.top_mlp")
    if top[-1] != 1:
        raise ConfigError(f"model.top_mlp={cfg.top_mlp!r} must end in 1 (one logit), not {top[-1]}")
    return ModelSpec(
        tables=tuple(tables), feature_names=tuple(schema.sparse_names), bottom=tuple(bottom), top=tuple(top),
        interaction=interaction, dot_self_interaction=cfg.dot_self_interaction,
        dcn_num_layers=cfg.dcn_num_layers, dcn_low_rank_dim=cfg.dcn_low_rank_dim,
        residual_units=cfg.residual_units, residual_hidden=cfg.residual_hidden, loss=cfg.loss,
    )


def resolved_spec(cfg: Config) -> ModelSpec:
    """The model of a resolved config (a run's or checkpoint's: its ``features`` hold the schema)."""
    if not cfg.features:
        raise ConfigError("this config has no [features] schema: it was not written by a resolved job")
    return resolve_model(cfg.model, from_dict(cfg.features, "the saved [features] schema"))
