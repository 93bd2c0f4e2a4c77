"""Entry point: ``torchrun --nproc_per_node=N -m dlrm_dist.train [--config F] [--s.k=v ...]``.

Parse the config, prepare (validate + plan, before any communication), create the process
group, build the trainer, train, report; always tear down.
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
from dlrm_dist.logs import init_logging
from dlrm_dist.metrics.runs import CONFIG_FILE, PLAN_FILE, SUMMARY_FILE
from dlrm_dist.planning import format_plan, planfile
from dlrm_dist.training.summary import final_report, summary_record
from dlrm_dist.training.build import build_trainer, prepare
from dlrm_dist.errors import run_cli

logger = logging.getLogger("dlrm_dist.train")  # not __name__: run as -m, that is "__main__"


def run(args: Sequence[str], env: Optional[DistEnv] = None) -> dict:
    """Runs one training job in this process (one rank); returns the summary record."""
    cfg = load_config(args)
    env = env or DistEnv.from_environ()
    init_logging(env.rank)
    prepared = prepare(cfg, env)
    logger.info("dlrm_dist: %d rank(s), backend %s, device %s", env.world_size, env.backend, env.device.type)
    logger.info(format_plan(prepared.plan))
    options = run_options(prepared.cfg)
    if options:
        logger.info("options: %s", ", ".join(options))
    cfg = prepared.cfg
    run_dir = Path(cfg.train.run_dir)
    if env.is_main:
        planfile.write(prepared.plan_file, run_dir / PLAN_FILE)
        (run_dir / CONFIG_FILE).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
    init_distributed(env)
    try:
        trainer = build_trainer(env, prepared)
        result = trainer.train()
        record = summary_record(cfg, env, result)
        if env.is_main:
            (run_dir / SUMMARY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
            logger.info(final_report(record))
        return record
    finally:
        teardown()


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
