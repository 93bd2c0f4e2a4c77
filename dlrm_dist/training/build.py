"""Turns a Config into the pieces of a job, in two phases around the process group.

``prepare`` runs before ``init_process_group``: it resolves what the data decides (the
feature schema and table sizes), validates everything, opens the data and makes the sharding plan, so bad input fails on every rank
alike and nothing can hang. ``build_trainer`` runs after it: shards the model, initialises
weights, builds optimizers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torchrec.distributed.types import ShardingPlan

from dlrm_dist.checkpoint import CheckpointError, CheckpointManager, CheckpointPolicy, RunInfo
from dlrm_dist.checkpoint.manager import warm_start_source
from dlrm_dist.config import Config, ConfigError, validate_for_launch
from dlrm_dist.config.loader import to_dict
from dlrm_dist.data import Dataset
from dlrm_dist.data.resolve import build_data, job_schema, table_pooling
from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.distributed.plan_sync import agree_on_plan
from dlrm_dist.distributed.parallel import compile_dense, set_matmul_precision, shard_model
from dlrm_dist.distributed.weights import init_embedding_weights
from dlrm_dist.metrics.log import MetricsLog
from dlrm_dist.features.schema import FeatureSchema
from dlrm_dist.model import DLRMTrain, ModelSpec, build_model, resolve_model
from dlrm_dist.model.init import default_workers
from dlrm_dist.planning import plan_rows
from dlrm_dist.planning.plan import make_plan
from dlrm_dist.planning.planfile import PlanFile
from dlrm_dist.planning.storage import check_job_storage
from dlrm_dist.planning.types import JobSpec
from dlrm_dist.training.length import resolve_length
from dlrm_dist.training.progressive import resolve_progressive
from dlrm_dist.training.optimizer_setup import LRSchedule, ScheduledLR, build_optimizer, mark_embedding_optimizer
from dlrm_dist.training.trainer import Trainer

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The resolved config (its ``features`` hold the full schema), the model's shape, the
    data source, the unsharded (meta) model and its plan."""

    cfg: Config
    schema: FeatureSchema
    spec: ModelSpec
    data: Dataset
    model: DLRMTrain
    plan_file: PlanFile  # the plan with the inputs and estimates it was chosen by

    @property
    def plan(self) -> ShardingPlan:
        return self.plan_file.plan


def resolve(cfg: Config) -> tuple[Config, FeatureSchema, ModelSpec]:
    """Fills what the data decides: the schema (with its table sizes) and the model's widths.

    The returned config says everything explicitly (``features`` = the fitted schema, the
    bottom MLP written out), so a run directory or checkpoint rebuilds the same model.
    """
    schema = job_schema(cfg)
    spec = resolve_model(cfg.model, schema)
    bottom = "-".join(map(str, spec.bottom)) or None
    model = dataclasses.replace(cfg.model, bottom_mlp=bottom)
    # features say it all now: data.schema (a file or a built-in name) beside them would be a second answer
    data = dataclasses.replace(cfg.data, schema=None)
    return dataclasses.replace(cfg, model=model, data=data, features=schema.to_dict()), schema, spec


def validate_job(cfg: Config, world_size: int, device_type: str = "cpu") -> tuple[Config, FeatureSchema, ModelSpec]:
    """``resolve`` plus every check of the job against the world size and device."""
    cfg, schema, spec = resolve(cfg)
    validate_for_launch(cfg, spec.tables, world_size, device_type)
    return cfg, schema, spec


def check_writable(directory: str, what: str, error: type[Exception]) -> None:
    """Creates ``directory`` and writes a probe file in it, so a run fails now rather than at its first save."""
    probe = Path(directory) / f".write-probe-{os.getpid()}"
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise error(f"{what} {directory!r} cannot be written ({type(e).__name__}: {e.strerror or e}); "
                    "choose another directory or fix its permissions") from None


def resolve_warm_start(cfg: Config) -> Config:
    """``train.warm_start`` turned into the one checkpoint directory it means (so the saved config
    names it), checked before the process group; unchanged when there is none or the run resumes."""
    source = warm_start_source(cfg.train)
    if source is None:
        return cfg
    logger.info("warm start: step %d of %s, %s", source.step, cfg.train.warm_start, source.why)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, warm_start=str(source.path)))


def prepare(cfg: Config, env: DistEnv) -> Prepared:
    """Resolves and validates ``cfg`` for ``env``, opens the data and plans, without a process group."""
    cfg, schema, spec = validate_job(cfg, env.world_size, env.device.type)
    # Before build_model: a table too large for the machine is named, not allocated.
    check_job_storage(spec.tables, env.world_size, env.local_world_size, env.device, cfg.optim.embedding_optimizer)
    if env.is_main:
        check_writable(cfg.train.run_dir, "train.run_dir", ConfigError)
    if cfg.train.checkpoint_dir and not cfg.train.inference_only:
        check_writable(cfg.train.checkpoint_dir, "train.checkpoint_dir", CheckpointError)
    cfg = resolve_warm_start(cfg)
    data = build_data(cfg, schema)
    cfg, decided = resolve_length(cfg, data)  # train.steps from epochs, early stopping's default: the data says
    cfg, progressive = resolve_progressive(cfg, data)
    decided += progressive
    for line in decided:
        logger.info(line)
    model = build_model(spec, seed=cfg.train.seed)
    mark_embedding_optimizer(model, cfg.optim)
    pooling = table_pooling(schema, data)
    job = JobSpec(
        world_size=env.world_size,
        local_size=env.local_world_size,
        device=env.device,
        batch_size_per_rank=cfg.train.global_batch_size // env.world_size,
        optimizer=cfg.optim.embedding_optimizer,
        pooling_factors=tuple(pooling[t.name] for t in spec.tables),
    )
    plan_file = make_plan(model, job, cfg.sharding.sharding_type, cfg.sharding.plan, cfg.sharding.planner)
    return Prepared(cfg, schema, spec, data, model, plan_file)


def build_trainer(env: DistEnv, prepared: Prepared) -> Trainer:
    """Shards the model and assembles the trainer (needs the process group)."""
    # Every rank planned with its own host's memory: all take rank 0's plan (distributed/plan_sync.py).
    prepared = dataclasses.replace(prepared, plan_file=agree_on_plan(prepared.plan_file, env, prepared.model))
    cfg = prepared.cfg
    set_matmul_precision(cfg.train.tf32, env.device)
    if cfg.train.mixed_precision == "bf16":
        prepared.model.use_mixed_precision(torch.bfloat16, env.device.type)
    if cfg.train.compile:
        compile_dense(prepared.model)
    model = shard_model(prepared.model, prepared.plan, env, cfg.sharding.qcomms)
    init_embedding_weights(model, {t.name: t.rows for t in prepared.spec.tables}, cfg.train.seed,
                           workers=default_workers(env.local_world_size))
    optimizer = build_optimizer(model, cfg.optim)
    lr = ScheduledLR(optimizer, LRSchedule.from_config(cfg.optim))
    log = MetricsLog(Path(cfg.train.run_dir), enabled=env.is_main, tensorboard=cfg.train.tensorboard)
    info = RunInfo(cfg.optim.embedding_optimizer, cfg.optim.dense_optimizer, plan_rows(prepared.plan), to_dict(cfg))
    checkpoints = CheckpointManager(CheckpointPolicy.from_config(cfg.train), model, optimizer, info)
    return Trainer(cfg, env, model, optimizer, lr, prepared.data, log, checkpoints)
