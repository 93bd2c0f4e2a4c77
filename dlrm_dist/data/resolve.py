"""Which feature schema a job has, and the data source that serves it.

The schema is resolved once, here, before any process group exists, and passed down: the
preprocessed directory's (columnar data carries its fitted schema, Criteo days included; a
schema also given must agree with it), else ``data.schema`` (a file, or a built-in name with
parameters such as ``demo:table_sizes=100/200/300``), else the config's ``[features]``
section, else the built-in demo. ``build_data`` opens the source for that resolved schema (a directory
of day partitions with ``data.partitions``: a PartitionedDataset over them, in time order).
"""

from __future__ import annotations

from typing import Optional, Sequence

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.config.sections import Config
from dlrm_dist.data import Dataset
from dlrm_dist.features.builtin import demo_schema
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.io import load_schema
from dlrm_dist.features.schema import FeatureSchema


def _given(cfg: Config) -> Optional[FeatureSchema]:
    if cfg.data.schema and cfg.features:
        raise ConfigError(f"data.schema={cfg.data.schema!r} and a [features] section both give the schema: keep one")
    if cfg.data.schema:
        return load_schema(cfg.data.schema)
    return load_schema(cfg.features) if cfg.features else None


def schema_differences(a: FeatureSchema, b: FeatureSchema) -> list[str]:
    """What differs between two schemas as written (fitted statistics aside), entry by entry."""
    da, db = a.without_fitted().to_dict(), b.without_fitted().to_dict()
    out = []
    for key in ("dense", "sparse"):
        ea, eb = {e["name"]: e for e in da[key]}, {e["name"]: e for e in db[key]}
        out += [f"{key} feature {n!r} only in one of them" for n in sorted(set(ea) ^ set(eb))]
        out += [f"{key} feature {n!r}" for n in sorted(set(ea) & set(eb)) if ea[n] != eb[n]]
        if not out and list(ea) != list(eb):
            out.append(f"{key} feature order")
    out += [k for k in ("label", "split", "input") if da[k] != db[k]]
    return out


def _columnar_schema(cfg: Config, given: Optional[FeatureSchema]) -> FeatureSchema:
    from dlrm_dist.data.columnar.layout import stored_schema

    stored = stored_schema(cfg.data.data_dir)
    if given is not None:
        diffs = schema_differences(given, stored)
        if diffs:
            raise SchemaError(f"the job's schema differs from the one {cfg.data.data_dir} was preprocessed with "
                              f"({'; '.join(diffs)}): preprocess again with this schema, or drop it from the job")
        if given.vocab_rows and dict(given.vocab_rows) != dict(stored.vocab_rows):
            raise SchemaError(f"the job's vocabulary sizes {dict(given.vocab_rows)} differ from those of "
                              f"{cfg.data.data_dir} {dict(stored.vocab_rows)}: it was preprocessed again since")
    return stored


def job_schema(cfg: Config) -> FeatureSchema:
    """The schema of ``cfg``'s job, fitted statistics included (see the module docstring)."""
    given = _given(cfg)
    if cfg.data.source == "columnar":
        schema = _columnar_schema(cfg, given)
    else:
        schema = given if given is not None else demo_schema()
    check_multi_hot(cfg.multi_hot.sizes, schema)
    return schema


def check_multi_hot(sizes: Optional[Sequence[int]], schema: FeatureSchema) -> None:
    """multi_hot.sizes must give one size for every sparse feature, or one per feature."""
    n = len(schema.sparse)
    if sizes is not None and len(sizes) not in (1, n):
        raise ConfigError(f"multi_hot.sizes has {len(sizes)} values; schema {schema.name!r} has {n} sparse "
                          f"features ({', '.join(schema.sparse_names[:4])}{', ...' if n > 4 else ''}): "
                          f"give one size for all of them or {n}, in the schema's order")


def build_data(cfg: Config, schema: FeatureSchema) -> Dataset:
    """The configured data source, serving the resolved ``schema``'s features."""
    d = cfg.data
    if d.source == "columnar" and d.partitions is not None:  # day partitions, trained in time order
        from dlrm_dist.data.columnar.dataset import PartitionedDataset
        from dlrm_dist.data.partition_list import parse_partitions

        if d.eval_split != "val":  # (here, not in DataConfig: a config copied with another eval_split is no crash)
            raise ConfigError(f"data.eval_split={d.eval_split!r}: a run over day partitions (data.partitions="
                              f"{d.partitions!r}) has no val or test split; it evaluates data.eval_partition "
                              "(unset: the partition after the last one trained on); dlrm-predict: --split val "
                              "scores that partition, --input scores raw rows")

        return PartitionedDataset(d.data_dir, parse_partitions(d.partitions), eval_partition=d.eval_partition,
                                  seed=d.seed, shuffle=d.shuffle, multi_hot=cfg.multi_hot.sizes)
    if d.source == "columnar":
        from dlrm_dist.data.columnar.dataset import ColumnarDataset

        return ColumnarDataset(d.data_dir, eval_split=d.eval_split, seed=d.seed, shuffle=d.shuffle,
                               multi_hot=cfg.multi_hot.sizes)
    from dlrm_dist.data.synthetic import SyntheticData, SyntheticSpec

    s = cfg.synthetic
    spec = SyntheticSpec(seed=d.seed, zipf_alpha=s.zipf_alpha, pooling_factor=s.pooling_factor,
                         variable_pooling=s.variable_pooling, teacher_scale=s.teacher_scale)
    return SyntheticData(spec, schema, eval_batches=s.eval_batches)


def table_pooling(schema: FeatureSchema, data: Dataset) -> dict[str, float]:
    """Mean ids per sample of each table (a shared table's features summed): the planner's pooling factor."""
    lengths = data.bag_lengths()
    return {t: sum(lengths[f.name] for f in schema.features_of(t)) for t in schema.table_names}
