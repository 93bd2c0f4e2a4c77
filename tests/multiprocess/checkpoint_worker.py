"""Rank-side code of the checkpoint tests."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from dlrm_dist.checkpoint import CheckpointError, latest_checkpoint
from dlrm_dist.checkpoint.reader import METADATA_FILE
from dlrm_dist.config import load_config
from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
from tests.checkpoint_helper import rewrite_file_sum
from tests.state_helper import gather_full_state_dict
from dlrm_dist.training.build import build_trainer, prepare
from dlrm_dist.training.trainer import TrainResult
from tests.small_job import SMALL_JOB

SMALL = SMALL_JOB + ["--train.eval_interval=0", "--synthetic.eval_batches=2", "--sharding-type=row_wise"]

ADAM = ["--sharding-type=data_parallel", "--optim.embedding_optimizer=adam", "--optim.embedding_lr=0.01",
        "--optim.dense_optimizer=adam"]


def _trained(env: DistEnv, args: list[str]) -> tuple[TrainResult, dict]:
    cfg = load_config(SMALL + args)
    trainer = build_trainer(env, prepare(cfg, env))
    result = trainer.train()
    return result, gather_full_state_dict(trainer.model)


def _run(env: DistEnv, args: list[str]) -> tuple[list[float], dict]:
    result, state = _trained(env, args)
    return result.losses, state


class _Payload:
    """Unpickling this calls os.system (pickled as posix.system), which would create the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _damaged_copies(good: Path, root: Path) -> dict[str, Path]:
    """Copies of ``good``: a data file gone, one cut in half, 64 bytes flipped, one cut with its checksum
    forged (so DCP itself meets it), and a .metadata that runs code (its checksum forged too)."""
    out = {}
    for name in ("bad", "cut", "flip", "forged", "crafted"):
        out[name] = root / name / good.name
        shutil.copytree(good, out[name])
    next(out["bad"].glob("*.distcp")).unlink()
    for name in ("cut", "forged"):
        data = sorted(out[name].glob("*.distcp"))[-1]
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    rewrite_file_sum(out["forged"], data.name)
    data = sorted(out["flip"].glob("*.distcp"))[-1]
    content = bytearray(data.read_bytes())
    for i in range(len(content) // 2, len(content) // 2 + 64):
        content[i] ^= 0x5A
    data.write_bytes(bytes(content))
    (out["crafted"] / METADATA_FILE).write_bytes(pickle.dumps(_Payload(root / "marker")))
    rewrite_file_sum(out["crafted"], METADATA_FILE)
    return out


def resume_cases(out: str) -> None:
    env = DistEnv.from_environ(device="cpu")
    init_distributed(env, timeout_s=120)
    root = Path(out)
    try:
        # run a's last checkpoint (row-wise, 2 ranks) is also what the inference and unsharded-export
        # tests read: its final evaluation is their reference
        run_a, final_a = _trained(env, [f"--train.checkpoint_dir={root / 'a'}", "--train.checkpoint_interval=2",
                                        "--train.keep_last=2", "--train.steps=8", f"--run-dir={root / 'ra'}"])
        straight = run_a.losses
        first, _ = _run(env, [f"--train.checkpoint_dir={root / 'b'}", "--train.steps=4", f"--run-dir={root / 'rb'}"])
        second, final_b = _run(env, [f"--train.checkpoint_dir={root / 'b'}", "--train.steps=8", f"--run-dir={root / 'rb'}"])
        adam = {}  # Adam's state is created lazily by torch; data-parallel tables and MLPs
        for name, steps, ckpt in (("straight", 8, "adam_a"), ("first", 4, "adam_b"), ("second", 8, "adam_b")):
            adam[name] = _run(env, ADAM + [f"--train.checkpoint_dir={root / ckpt}", f"--train.steps={steps}",
                                           f"--run-dir={root / 'radam'}"])
        errors = {}
        if env.is_main:
            _damaged_copies(root / "b" / "step_00000008", root)
        dist.barrier()
        for name, args in (("corrupt", [f"--train.checkpoint={root / 'bad'}", "--train.steps=9"]),
                           ("truncated", [f"--train.checkpoint={root / 'cut'}", "--train.steps=9"]),
                           ("flipped", [f"--train.checkpoint={root / 'flip'}", "--train.steps=9"]),
                           ("forged", [f"--train.checkpoint={root / 'forged'}", "--train.steps=9"]),
                           ("crafted", [f"--train.checkpoint={root / 'crafted'}", "--train.steps=9"]),
                           ("crafted_eval", [f"--train.checkpoint={root / 'crafted'}", "--train.inference_only=true"]),
                           ("other_model", [f"--train.checkpoint={root / 'b'}", "--data.schema=demo:table_sizes=100/200/50/81"]),
                           ("other_optimizer", [f"--train.checkpoint={root / 'b'}", "--train.steps=9",
                                                "--optim.embedding_optimizer=sgd"]),
                           ("missing", [f"--train.checkpoint={root / 'none'}"])):
            try:
                _run(env, args + [f"--run-dir={root / 'rx'}"])
                errors[name] = None
            except CheckpointError as e:
                errors[name] = str(e)
        errors["marker"] = (root / "marker").exists()
        if env.is_main:
            torch.save({"straight": straight, "straight_eval": run_a.final_eval.to_dict(), "first": first, "second": second, "final_a": final_a,
                        "final_b": final_b, "errors": errors, "adam": adam,
                        "kept": sorted(p.name for p in (root / "a").iterdir()),
                        "latest": str(latest_checkpoint(root / "a"))}, root / "result.pt")
        dist.barrier()
    finally:
        teardown()
