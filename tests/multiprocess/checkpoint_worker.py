"""Rank-side code of the checkpoint tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from dlrm_dist.checkpoint import CheckpointError, latest_checkpoint
from dlrm_dist.config import load_config
from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
from tests.state_helper import gather_full_state_dict
from dlrm_dist.training.build import build_trainer, prepare
from tests.small_job import SMALL_JOB

SMALL = SMALL_JOB + ["--train.eval_interval=0", "--data.eval_batches=2", "--sharding-type=row_wise"]

ADAM = ["--sharding-type=data_parallel", "--optim.embedding_optimizer=adam", "--optim.embedding_lr=0.01",
        "--optim.dense_optimizer=adam"]


def _run(env: DistEnv, args: list[str]) -> tuple[list[float], dict]:
    cfg = load_config(SMALL + args)
    trainer = build_trainer(env, prepare(cfg, env))
    result = trainer.train()
    return result.losses, gather_full_state_dict(trainer.model)


def resume_cases(out: str) -> None:
    env = DistEnv.from_environ(device="cpu")
    init_distributed(env, timeout_s=120)
    root = Path(out)
    try:
        straight, final_a = _run(env, [f"--train.checkpoint_dir={root / 'a'}", "--train.checkpoint_interval=2",
                                       "--train.keep_last=2", "--train.steps=8", f"--run-dir={root / 'ra'}"])
        first, _ = _run(env, [f"--train.checkpoint_dir={root / 'b'}", "--train.steps=4", f"--run-dir={root / 'rb'}"])
        second, final_b = _run(env, [f"--train.checkpoint_dir={root / 'b'}", "--train.steps=8", f"--run-dir={root / 'rb'}"])
        adam = {}  # Adam's state is created lazily by torch; data-parallel tables and MLPs
        for name, steps, ckpt in (("straight", 8, "adam_a"), ("first", 4, "adam_b"), ("second", 8, "adam_b")):
            adam[name] = _run(env, ADAM + [f"--train.checkpoint_dir={root / ckpt}", f"--train.steps={steps}",
                                           f"--run-dir={root / 'radam'}"])
        errors = {}
        if env.is_main:  # damaged copies: one rank's data file is gone, or cut in half
            bad, cut = root / "bad" / "step_00000008", root / "cut" / "step_00000008"
            shutil.copytree(root / "b" / "step_00000008", bad)
            next(bad.glob("*.distcp")).unlink()
            shutil.copytree(root / "b" / "step_00000008", cut)
            data = sorted(cut.glob("*.distcp"))[-1]
            data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
        dist.barrier()
        for name, args in (("corrupt", [f"--train.checkpoint={root / 'bad'}", "--train.steps=9"]),
                           ("truncated", [f"--train.checkpoint={root / 'cut'}", "--train.steps=9"]),
                           ("other_model", [f"--train.checkpoint={root / 'b'}", "--model.table_sizes=100,200,50,81"]),
                           ("other_optimizer", [f"--train.checkpoint={root / 'b'}", "--train.steps=9",
                                                "--optim.embedding_optimizer=sgd"]),
                           ("missing", [f"--train.checkpoint={root / 'none'}"])):
            try:
                _run(env, args + [f"--run-dir={root / 'rx'}"])
                errors[name] = None
            except CheckpointError as e:
                errors[name] = str(e)
        if env.is_main:
            torch.save({"straight": straight, "first": first, "second": second, "final_a": final_a,
                        "final_b": final_b, "errors": errors, "adam": adam,
                        "kept": sorted(p.name for p in (root / "a").iterdir()),
                        "latest": str(latest_checkpoint(root / "a"))}, root / "result.pt")
        dist.barrier()
    finally:
        teardown()
