"""Which feature schema a job has, and the data source that serves it.

The schema is found, in order: in the preprocessed directory (columnar data carries its
fitted schema; a schema also given must agree with it), in ``data.schema`` (a file or a
built-in name), in the config's ``[features]`` section, or it is the built-in one of the
source (Criteo's for Criteo days, the demo's for synthetic data, sized by
``model.table_sizes``). Everything runs before any process group exists.
"""

from __future__ import annotations

from typing import Optional

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.config.sections import Config
from dlrm_dist.data import Dataset
from dlrm_dist.features.builtin import criteo_schema, demo_schema
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


def _criteo_schema(cfg: Config, given: Optional[FeatureSchema]) -> FeatureSchema:
    from dlrm_dist.data.criteo.dataset import table_sizes

    data_sizes = table_sizes(cfg.data.data_dir, cfg.data.max_ind_range)  # meta.json only: build_data opens the days
    schema = given or criteo_schema(cfg.model.table_sizes or data_sizes)
    rows = [schema.table_rows(f.table) for f in schema.sparse]
    small = [f"{f.name}: {r} < {d}" for f, r, d in zip(schema.sparse, rows, data_sizes) if r < d]
    if len(rows) != len(data_sizes) or small:
        raise ConfigError(f"the tables do not fit the data in {cfg.data.data_dir} ({len(rows)} tables for "
                          f"{len(data_sizes)} features; too small: {small})")
    return schema


def job_schema(cfg: Config) -> FeatureSchema:
    """The schema of ``cfg``'s job (see the module docstring for where it comes from)."""
    given = _given(cfg)
    if given is not None and cfg.model.table_sizes is not None:
        raise ConfigError("model.table_sizes sizes the default built-in schema only; the schema given "
                          f"({given.name!r}) has its own table sizes: drop one of them")
    if cfg.data.source == "columnar":
        return _columnar_schema(cfg, given)
    if cfg.data.source == "criteo":
        return _criteo_schema(cfg, given)
    if given is not None:
        return given
    return demo_schema(cfg.model.table_sizes)


def build_data(cfg: Config, schema: FeatureSchema) -> Dataset:
    """The configured data source, serving ``schema``'s features."""
    d = cfg.data
    if d.source == "criteo":
        from dlrm_dist.data.criteo.dataset import CriteoDataset

        return CriteoDataset(d.data_dir, schema.sparse_names, eval_split=d.eval_split, seed=d.seed,
                             max_ind_range=d.max_ind_range, multi_hot=d.multi_hot_sizes, shuffle=d.shuffle)
    if d.source == "columnar":
        from dlrm_dist.data.columnar.dataset import ColumnarDataset

        return ColumnarDataset(d.data_dir, eval_split=d.eval_split, seed=d.seed, shuffle=d.shuffle)
    from dlrm_dist.data.synthetic import SyntheticData, SyntheticSpec

    spec = SyntheticSpec(seed=d.seed, zipf_alpha=d.zipf_alpha, pooling_factor=d.pooling_factor,
                         variable_pooling=d.variable_pooling, teacher_scale=d.teacher_scale)
    return SyntheticData(spec, schema, eval_batches=d.eval_batches)


def table_pooling(schema: FeatureSchema, data: Dataset) -> dict[str, float]:
    """Mean ids per sample of each table (a shared table's features summed): the planner's pooling factor."""
    lengths = data.bag_lengths()
    return {t: sum(lengths[f.name] for f in schema.features_of(t)) for t in schema.table_names}
