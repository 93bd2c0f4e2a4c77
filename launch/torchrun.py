"""Launch the trainer with torchrun on one node or many. No training logic lives here.

    python -m launch.torchrun [--nnodes N] [--nproc-per-node N] [--node-rank R]
                              [--rdzv-endpoint HOST:PORT] [--job-id ID] [--dry-run] [-- TRAINER ARGS...]

Defaults come from the variables cluster users already set: NNODES, NPROC_PER_NODE,
NODE_RANK, RDZV_ENDPOINT (or MASTER_ADDR and MASTER_PORT), JOB_ID. One node runs
``torchrun --standalone``; several use c10d rendezvous at the endpoint. With GPUs the
ranks are one per GPU and use nccl; without, CPU ranks use gloo (the trainer's own rule,
dlrm_dist/distributed/env.py) — the launcher says which before starting, and says loudly
when an NVIDIA driver is loaded but torch cannot use it (it would otherwise start CPU ranks).
A plan file named after ``--`` must fit the launch (dlrm_dist/distributed/plan_shape.py): checked before starting.

Restarts (``--max-restarts``) get torchrun's private per-round store
(TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1): with the agent's shared store, a restarted round
can read the dead round's gloo/nccl addresses and fail to connect (pytorch#135712).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Mapping, Optional, Sequence

import torch

from dlrm_dist.distributed.env import RESTART_SAFE_ENV, gpu_unusable_reason
from dlrm_dist.errors import run_cli
from dlrm_dist.distributed.plan_shape import check_plan_shape

DEFAULT_CPU_RANKS = 2
DEFAULT_PORT = 29500


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.torchrun", description=__doc__.splitlines()[0])
    p.add_argument("--nnodes", type=int, default=int(env.get("NNODES", 1)))
    p.add_argument("--nproc-per-node", type=int, default=int(env["NPROC_PER_NODE"]) if "NPROC_PER_NODE" in env else None,
                   help="ranks per node (default: one per GPU, else 2 CPU ranks)")
    p.add_argument("--node-rank", type=int, default=int(env["NODE_RANK"]) if "NODE_RANK" in env else None)
    p.add_argument("--rdzv-endpoint", default=env.get("RDZV_ENDPOINT") or (
        f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', DEFAULT_PORT)}" if "MASTER_ADDR" in env else None))
    p.add_argument("--job-id", default=env.get("JOB_ID", "dlrm_dist"))
    p.add_argument("--max-restarts", type=int, default=int(env.get("MAX_RESTARTS", 0)))
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.add_argument("trainer_args", nargs=argparse.REMAINDER, help="after --: arguments of dlrm_dist.train")
    return p


def build_command(argv: Sequence[str], env: Mapping[str, str], gpus: int) -> tuple[list[str], str]:
    """(the torchrun command, a sentence saying what it will do)."""
    args = _parser(env).parse_args(list(argv))
    nproc = args.nproc_per_node or (gpus if gpus else DEFAULT_CPU_RANKS)
    backend = f"nccl on {nproc} GPU(s) per node" if gpus else f"gloo on {nproc} CPU rank(s) per node (no GPU)"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--max_restarts={args.max_restarts}"]
    if args.nnodes == 1 and not args.rdzv_endpoint:
        cmd.append("--standalone")
        where = "one node (standalone rendezvous)"
    else:
        if not args.rdzv_endpoint:
            raise SystemExit("launch: several nodes need --rdzv-endpoint HOST:PORT (or RDZV_ENDPOINT / MASTER_ADDR)")
        cmd += [f"--nnodes={args.nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={args.rdzv_endpoint}",
                f"--rdzv_id={args.job_id}"]
        if args.node_rank is not None:
            cmd.append(f"--node_rank={args.node_rank}")
        where = f"{args.nnodes} node(s), c10d rendezvous at {args.rdzv_endpoint}"
    trainer = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args  # only the separator
    check_plan_shape(trainer, args.nnodes, nproc)
    cmd += ["-m", "dlrm_dist.train", *trainer]
    return cmd, f"launch: {where}; backend {backend}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_cli("launch", lambda: _launch(argv))


def _launch(argv: list[str]) -> int:
    gpus = torch.cuda.device_count()
    cmd, summary = build_command(argv, os.environ, gpus)
    print(summary, flush=True)
    unusable = None if gpus else gpu_unusable_reason()
    if unusable:
        print(f"launch: WARNING: starting CPU ranks although {unusable}", file=sys.stderr, flush=True)
    if "--dry-run" in argv:
        print(shlex.join(["env", *(f"{k}={v}" for k, v in RESTART_SAFE_ENV.items()), *cmd]))
        return 0
    os.execve(cmd[0], cmd, {**RESTART_SAFE_ENV, **os.environ})
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
