"""Entry point: ``torchrun --nproc_per_node=N -m dlrm_dist.train [--config F] [--s.k=v ...]``.

Parse the config, prepare (validate + plan, before any communication), lock the directories
the run writes (rank 0), create the process group, agree on the locks, build the trainer,
train, report; always tear down and release the locks.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from torch.distributed.elastic.multiprocessing.errors import record

from dlrm_dist.config import load_config
from dlrm_dist.config.loader import help_text, to_dict
from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
from dlrm_dist.fileio import atomic_write_json, atomic_write_text
from dlrm_dist.logs import init_logging
from dlrm_dist.metrics.records import finite_or_none
from dlrm_dist.metrics.runs import CONFIG_FILE, PLAN_FILE, SUMMARY_FILE
from dlrm_dist.planning import format_plan, planfile
from dlrm_dist.training.summary import final_report, summary_record
from dlrm_dist.training.build import Prepared, build_trainer, prepare
from dlrm_dist.planning.job_calibration import with_job_calibration
from dlrm_dist.training.run_lock import RunLocks
from dlrm_dist.errors import run_cli

logger = logging.getLogger("dlrm_dist.train")  # not __name__: run as -m, that is "__main__"


def run(args: Sequence[str], env: Optional[DistEnv] = None) -> dict:
    """Runs one training job in this process (one rank); returns the summary record."""
    cfg = load_config(args)
    env = env or DistEnv.from_environ(device=cfg.train.device)
    init_logging(env.rank)
    with RunLocks(env) as locks:
        prepared = prepare(cfg, env)
        cfg = prepared.cfg
        locks.take(cfg)  # before anything is written; a refusal is told to every rank by agree()
        init_distributed(env)
        try:
            locks.agree()
            return train(prepared, env)
        finally:
            teardown()


def train(prepared: Prepared, env: DistEnv) -> dict:
    """Writes the run's plan and config, trains, writes the summary (the process group exists)."""
    # sharding.calibration: this machine measured over the job's group (or a matching file), then planned again
    prepared = with_job_calibration(prepared, env)
    cfg = prepared.cfg
    logger.info("dlrm_dist: %d rank(s), backend %s, device %s", env.world_size, env.backend, env.device.type)
    logger.info(format_plan(prepared.plan))
    options = run_options(cfg)
    if options:
        logger.info("options: %s", ", ".join(options))
    run_dir = Path(cfg.train.run_dir)
    if env.is_main:
        planfile.write(prepared.plan_file, run_dir / PLAN_FILE)
        # Python's JSON, not strict: a feature's unbounded clip is Infinity, which null would not say.
        atomic_write_text(run_dir / CONFIG_FILE, json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
    trainer = build_trainer(env, prepared)
    result = trainer.train()
    record = summary_record(cfg, env, result)
    if env.is_main:
        # A metric can be NaN (NE of a split without positives): strict JSON holds it as null.
        atomic_write_json(run_dir / SUMMARY_FILE, finite_or_none(record), indent=2, sort_keys=True)
        logger.info(final_report(record))
    return record


def run_options(cfg) -> list[str]:
    """The performance options in force, for the plan summary."""
    out = []
    if cfg.sharding.qcomms != "none":
        out.append(f"quantized all-to-all {cfg.sharding.qcomms} (forward and backward)")
    if cfg.train.mixed_precision != "none":
        out.append(f"dense part in {cfg.train.mixed_precision} autocast")
    if cfg.train.tf32:
        out.append("TF32 matmuls (CUDA)")
    if cfg.train.compile:
        out.append("dense part compiled (torch.compile)")
    return out


@record  # a failing rank's traceback goes to torchrun's error file and its "Root Cause" report
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(help_text())
        return 0
    # a bad config (2), a diverged run (3), a damaged checkpoint (4), ...
    return run_cli("dlrm-train", lambda: 0 if run(args) is not None else 1)


if __name__ == "__main__":
    sys.exit(main())
