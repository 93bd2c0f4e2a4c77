"""Rank-side code that runs several training jobs one after another in one process group.

A test that trains a few small jobs through torchrun pays a launcher and a torch + TorchRec
start per job and per rank (seconds each on 2 cores); ``train_jobs`` pays them once. Each job
goes through the trainer's own entry, ``dlrm_dist.train.train`` (it writes the run's plan,
config, metrics and summary, and logs the plan summary and the options in force), after the
same ``prepare``; what ``dlrm_dist.train.run`` adds (the run locks, creating the process
group) is covered by the tests that start the real command line. Rank 0's log lines of job
NAME are kept in OUT/NAME.log, the run directory is OUT/NAME.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch.distributed as dist

from dlrm_dist.config import load_config
from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
from dlrm_dist.logs import init_logging
from dlrm_dist.train import train
from dlrm_dist.training.build import prepare


def run_job(env: DistEnv, out: Path, name: str, args: list[str]) -> dict:
    """One job in the existing process group; returns its summary record."""
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # the package logger writes through tqdm.write to sys.stdout
        record = train(prepare(load_config(args + [f"--run-dir={out / name}"]), env), env)
    if env.is_main:
        (out / f"{name}.log").write_text(log.getvalue())
    dist.barrier()  # no rank starts the next job's collectives while another still writes
    return record


def train_jobs(out: str, jobs: dict[str, list[str]]) -> None:
    """Runs each job of ``jobs`` (name -> arguments) in turn, in one process group of this world."""
    env = DistEnv.from_environ(device="cpu")
    init_logging(env.rank)
    init_distributed(env, timeout_s=120)
    try:
        for name, args in jobs.items():
            run_job(env, Path(out), name, args)
    finally:
        teardown()
