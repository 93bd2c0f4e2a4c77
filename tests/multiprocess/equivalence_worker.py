"""Rank-side code of the equivalence tests: train each case under DMP, save what happened."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from dlrm_dist.config import load_config
from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
from tests.state_helper import gather_full_state_dict
from dlrm_dist.training.build import build_trainer, prepare

# A small DLRM with multi-hot bags: 5 tables of uneven sizes, dim 16 (column shards of
# width 4 on up to 4 ranks), 6 steps of 64 samples.
BASE_ARGS = [
    "--model.embedding_dim=16",
    "--model.top_mlp=32-16-1",
    "--synthetic.pooling_factor=2",
    "--synthetic.variable_pooling=true",
    "--synthetic.eval_batches=1",
    "--train.global_batch_size=64",
    "--train.steps=6",
    "--train.eval_interval=0",
    "--train.progress=false",
]


# The same, over a schema unlike Criteo's (tests/schemas/mixed.toml): 5 dense features, dims 8
# and 16, a table shared by two features, mean pooling; the cat interaction (mixed dims).
MIXED_SCHEMA = str(Path(__file__).resolve().parents[1] / "schemas" / "mixed.toml")
MIXED_ARGS = [f"--data.schema={MIXED_SCHEMA}", "--model.interaction=cat", "--model.bottom_mlp=5-16-8"]


DEMO_ARGS = ["--data.schema=demo:table_sizes=40/24/64/16/32", "--model.bottom_mlp=13-32-16"]


def case_args(sharding_type: str, emb_opt: str, dense_opt: str) -> list[str]:
    # Adagrad's first update is lr * g / (|g| + eps): for a gradient that nearly cancels
    # across ranks, summation order moves it by a fraction of lr. SGD takes a large rate
    # so that every weight visibly moves; Adagrad a realistic one.
    # (The Adagrad rates are the demo's defaults.)
    emb_lr = "0.5" if emb_opt == "sgd" else "0.05"
    dense_lr = "0.05" if dense_opt == "sgd" else "0.005"
    return BASE_ARGS + DEMO_ARGS + [
        f"--optim.embedding_lr={emb_lr}",
        f"--optim.dense_lr={dense_lr}",
        f"--sharding.sharding_type={sharding_type}",
        f"--optim.embedding_optimizer={emb_opt}",
        f"--optim.dense_optimizer={dense_opt}",
    ]


def mixed_args(sharding_type: str, emb_opt: str) -> list[str]:
    """A case over the mixed schema (instead of the demo's Criteo-shaped tables)."""
    args = case_args(sharding_type, emb_opt, emb_opt if emb_opt != "rowwise_adagrad" else "adagrad")
    # Under SGD the first bottom layer of this small model moves < 1e-4 at the usual rate.
    faster = ["--optim.dense_lr=0.5"] if emb_opt == "sgd" else []
    return [a for a in args if a not in DEMO_ARGS] + MIXED_ARGS + faster


def run_cases(cases: list[tuple[str, list[str]]], out_dir: str) -> None:
    env = DistEnv.from_environ(device="cpu")
    init_distributed(env, timeout_s=120)
    try:
        for name, args in cases:
            cfg = load_config(args + [f"--train.run_dir={out_dir}/{name}"])
            trainer = build_trainer(env, prepare(cfg, env))
            initial = gather_full_state_dict(trainer.model)
            result = trainer.train()
            final = gather_full_state_dict(trainer.model)
            if env.is_main:
                torch.save(
                    {"initial": initial, "final": final, "losses": result.losses, "args": args},
                    Path(out_dir, f"{name}.pt"),
                )
            dist.barrier()
    finally:
        teardown()
