"""Turns a Config into the pieces of a job, in two phases around the process group.

``prepare`` runs before ``init_process_group``: it resolves what the data decides (table
sizes), validates everything and makes the sharding plan, so bad input fails on every rank
alike and nothing can hang. ``build_trainer`` runs after it: shards the model, initialises
weights, builds optimizers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn
from torchrec.distributed.types import ShardingPlan

from dlrm_dist.config import Config, ConfigError, validate_for_launch
from dlrm_dist.config.loader import to_dict
from dlrm_dist.config.schema import DEMO_TABLE_SIZES
from dlrm_dist.data import Dataset
from dlrm_dist.data.criteo.dataset import CriteoDataset
from dlrm_dist.data.synthetic import SyntheticCriteo, SyntheticSpec
from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.distributed.parallel import shard_model
from dlrm_dist.distributed.weights import init_embedding_weights
from dlrm_dist.metrics.log import MetricsLog
from dlrm_dist.model import build_model, feature_names
from dlrm_dist.model.tables import make_tables
from dlrm_dist.planning import plan_rows
from dlrm_dist.planning.plan import JobSpec, make_plan
from dlrm_dist.training.optim import LRSchedule, ScheduledLR, build_optimizer, mark_embedding_optimizer
from dlrm_dist.training.trainer import Trainer


@dataclass
class Prepared:
    """The resolved config, the unsharded (meta) model and its plan."""

    cfg: Config
    model: nn.Module
    plan: ShardingPlan


def build_data(cfg: Config) -> Dataset:
    """The configured data source (needs resolved table sizes for synthetic data)."""
    d = cfg.data
    if d.source == "criteo":
        return CriteoDataset(d.data_dir, feature_names(26), eval_split=d.eval_split, seed=d.seed,
                             max_ind_range=d.max_ind_range, multi_hot=d.multi_hot_sizes, shuffle=d.shuffle)
    sizes = cfg.model.table_sizes or DEMO_TABLE_SIZES
    spec = SyntheticSpec(table_sizes=tuple(sizes), seed=d.seed, zipf_alpha=d.zipf_alpha,
                         pooling_factor=d.pooling_factor, variable_pooling=d.variable_pooling,
                         teacher_scale=d.teacher_scale)
    return SyntheticCriteo(spec, feature_names(len(sizes)), eval_batches=d.eval_batches)


def resolve(cfg: Config) -> Config:
    """Fills what the data decides: the table sizes (the demo's, or the Criteo directory's)."""
    if cfg.data.source == "synthetic":
        sizes = cfg.model.table_sizes or list(DEMO_TABLE_SIZES)
    else:
        data_sizes = build_data(cfg).table_sizes
        sizes = cfg.model.table_sizes or data_sizes
        small = [f"cat_{i}: {s} < {d}" for i, (s, d) in enumerate(zip(sizes, data_sizes)) if s < d]
        if len(sizes) != len(data_sizes) or small:
            raise ConfigError(f"model.table_sizes do not fit the data in {cfg.data.data_dir} "
                              f"({len(sizes)} tables for {len(data_sizes)} features; too small: {small})")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, table_sizes=list(sizes)))


def _pooling_factors(cfg: Config) -> tuple[float, ...]:
    n = len(cfg.model.table_sizes)
    if cfg.data.source == "criteo":
        hot = cfg.data.multi_hot_sizes or [1]
        return tuple(float(h) for h in (hot * n if len(hot) == 1 else hot))
    return (float(cfg.data.pooling_factor),) * n


def prepare(cfg: Config, env: DistEnv) -> Prepared:
    """Resolves and validates ``cfg`` for ``env`` and plans, without a process group."""
    cfg = resolve(cfg)
    validate_for_launch(cfg, env.world_size, env.device.type)
    model = build_model(cfg.model, seed=cfg.train.seed)
    mark_embedding_optimizer(model, cfg.optim)
    job = JobSpec(
        world_size=env.world_size,
        local_size=env.local_world_size,
        device=env.device,
        batch_size_per_rank=cfg.train.global_batch_size // env.world_size,
        optimizer=cfg.optim.embedding_optimizer,
        pooling_factors=_pooling_factors(cfg),
    )
    plan = make_plan(model, job, cfg.sharding.sharding_type, cfg.sharding.plan, cfg.sharding.planner)
    return Prepared(cfg, model, plan)


def table_sizes(cfg: Config) -> dict[str, int]:
    return {t.name: t.num_embeddings for t in make_tables(cfg.model.table_sizes, cfg.model.embedding_dim)}


def build_trainer(env: DistEnv, prepared: Prepared, say: Callable[[str], None] = print) -> Trainer:
    """Shards the model and assembles the trainer (needs the process group)."""
    cfg = prepared.cfg
    model = shard_model(prepared.model, prepared.plan, env)
    init_embedding_weights(model, table_sizes(cfg), cfg.train.seed)
    optimizer = build_optimizer(model, cfg.optim)
    lr = ScheduledLR(optimizer, LRSchedule.from_config(cfg.optim))
    log = MetricsLog(Path(cfg.train.run_dir), enabled=env.is_main)
    info = {"embedding_optimizer": cfg.optim.embedding_optimizer, "dense_optimizer": cfg.optim.dense_optimizer,
            "plan": plan_rows(prepared.plan), "config": to_dict(cfg)}
    return Trainer(cfg, env, model, optimizer, lr, build_data(cfg), log, say=say, checkpoint_info=info)
