"""Entry point: ``torchrun --nproc_per_node=N -m dlrm_dist.train [--config F] [--s.k=v ...]``.

Parse the config, prepare (validate + plan, before any communication), create the process
group, build the trainer, train, report; always tear down.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from torch.distributed.elastic.multiprocessing.errors import record
from tqdm import tqdm

from dlrm_dist.config import ConfigError, load_config
from dlrm_dist.config.loader import help_text, to_dict
from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
from dlrm_dist.logs import quiet_libraries
from dlrm_dist.planning import format_plan
from dlrm_dist.report import final_report, summary_record
from dlrm_dist.training.build import build_trainer, prepare
from dlrm_dist.training.trainer import DivergedError


def run(args: Sequence[str], env: Optional[DistEnv] = None) -> dict:
    """Runs one training job in this process (one rank); returns the summary record."""
    cfg = load_config(args)
    env = env or DistEnv.from_environ()
    prepared = prepare(cfg, env)
    # tqdm.write keeps messages from tearing the progress bar; only rank 0 speaks.
    say = tqdm.write if env.is_main else (lambda _msg: None)
    say(f"dlrm_dist: {env.world_size} rank(s), backend {env.backend}, device {env.device.type}")
    say(format_plan(prepared.plan))
    options = run_options(prepared.cfg)
    if options:
        say("options: " + ", ".join(options))
    init_distributed(env)
    try:
        cfg = prepared.cfg
        trainer = build_trainer(env, prepared, say=say)
        result = trainer.train()
        record = summary_record(cfg, env, result)
        if env.is_main:
            run_dir = Path(cfg.train.run_dir)
            (run_dir / "summary.json").write_text(json.dumps(record, indent=2, sort_keys=True))
            (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
            say(final_report(record))
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
    quiet_libraries()
    try:
        run(args)
    except ConfigError as e:
        print(f"dlrm-train: error: {e}", file=sys.stderr)
        return 2
    except DivergedError as e:
        print(f"dlrm-train: error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
