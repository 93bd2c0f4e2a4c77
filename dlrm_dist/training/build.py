"""Turns a Config into the pieces of a job, in two phases around the process group.

``prepare`` runs before ``init_process_group``: it validates everything and makes the
sharding plan, so bad input fails on every rank alike and nothing can hang.
``build_trainer`` runs after it: shards the model, initialises weights, builds optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn
from torchrec.distributed.types import ShardingPlan

from dlrm_dist.config import Config, validate_for_launch
from dlrm_dist.data.synthetic import SyntheticCriteo, SyntheticSpec
from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.distributed.parallel import shard_model
from dlrm_dist.distributed.weights import init_embedding_weights
from dlrm_dist.metrics.log import MetricsLog
from dlrm_dist.model import build_model, feature_names
from dlrm_dist.model.tables import make_tables
from dlrm_dist.planning.plan import JobSpec, make_plan
from dlrm_dist.training.optim import LRSchedule, ScheduledLR, build_optimizer, mark_embedding_optimizer
from dlrm_dist.training.trainer import Trainer


@dataclass
class Prepared:
    """The unsharded (meta) model and its plan: everything decided before communication."""

    model: nn.Module
    plan: ShardingPlan


def prepare(cfg: Config, env: DistEnv) -> Prepared:
    """Validates ``cfg`` for ``env`` and plans, without a process group."""
    validate_for_launch(cfg, env.world_size, env.device.type)
    model = build_model(cfg.model, seed=cfg.train.seed)
    mark_embedding_optimizer(model, cfg.optim)
    job = JobSpec(
        world_size=env.world_size,
        local_size=env.local_world_size,
        device=env.device,
        batch_size_per_rank=cfg.train.global_batch_size // env.world_size,
        optimizer=cfg.optim.embedding_optimizer,
        pooling_factor=float(cfg.data.pooling_factor),
    )
    plan = make_plan(model, job, cfg.sharding.sharding_type, cfg.sharding.plan, cfg.sharding.planner)
    return Prepared(model, plan)


def build_data(cfg: Config) -> SyntheticCriteo:
    """The configured data source."""
    spec = SyntheticSpec(
        table_sizes=tuple(cfg.model.table_sizes),
        seed=cfg.data.seed,
        zipf_alpha=cfg.data.zipf_alpha,
        pooling_factor=cfg.data.pooling_factor,
        variable_pooling=cfg.data.variable_pooling,
        teacher_scale=cfg.data.teacher_scale,
    )
    return SyntheticCriteo(spec, feature_names(len(cfg.model.table_sizes)))


def table_sizes(cfg: Config) -> dict[str, int]:
    return {t.name: t.num_embeddings for t in make_tables(cfg.model.table_sizes, cfg.model.embedding_dim)}


def build_trainer(cfg: Config, env: DistEnv, prepared: Prepared, say: Callable[[str], None] = print) -> Trainer:
    """Shards the model and assembles the trainer (needs the process group)."""
    model = shard_model(prepared.model, prepared.plan, env)
    init_embedding_weights(model, table_sizes(cfg), cfg.train.seed)
    optimizer = build_optimizer(model, cfg.optim)
    lr = ScheduledLR(optimizer, LRSchedule.from_config(cfg.optim))
    log = MetricsLog(Path(cfg.train.run_dir), enabled=env.is_main)
    return Trainer(cfg, env, model, optimizer, lr, build_data(cfg), log, say=say)
