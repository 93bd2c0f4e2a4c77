"""Run safety through the real trainer: divergence, unwritable directories, half-written checkpoints.

Each test failed on the code before its fix: a NaN loss trained on and exited 0, a read-only
checkpoint directory failed only at the first save, a stale checkpoint that could not be
removed was reported as removed, and `make demo NPROC=3` stopped at a batch that 3 does not divide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dist_helper import run_ranks
from tests.small_job import SMALL_JOB

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dlrm_dist.train"]


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(TORCHRUN + SMALL_JOB + args, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=timeout)


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    common = ["--sharding-type=table_wise", f"--checkpoint-dir={ckpt}", "--train.checkpoint_interval=2",
              "--train.eval_interval=0", "--optim.embedding_optimizer=sgd", "--optim.dense_optimizer=sgd"]
    assert _run(common + ["--steps=4", f"--run-dir={tmp_path / 'a'}"]).returncode == 0
    # resumed at step 4 with absurd rates: the weights overflow and the loss becomes nan
    proc = _run(common + ["--steps=12", "--optim.embedding_lr=1e38", "--optim.dense_lr=1e38",
                          "--train.log_interval=3", f"--run-dir={tmp_path / 'b'}"])
    assert proc.returncode != 0
    err = proc.stderr
    assert "dlrm-train: error: the loss became nan at step" in err and "training diverged" in err
    assert "the newest checkpoint" in err and "step_00000004" in err
    assert sorted(p.name for p in ckpt.iterdir() if p.name != ".dlrm_dist.lock") == ["step_00000002", "step_00000004"]


def test_unwritable_checkpoint_dir_fails_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = _run([f"--checkpoint-dir={blocker / 'ckpt'}", "--steps=50", f"--run-dir={tmp_path / 'r'}"], timeout=120)
    assert proc.returncode != 0
    assert f"train.checkpoint_dir '{blocker / 'ckpt'}' cannot be written" in proc.stderr
    assert "by sharding type" not in proc.stdout  # nothing started: no plan printed, no step taken


def _discard_with_failing_rmtree(root: str) -> None:
    import torch.distributed as dist

    from dlrm_dist.checkpoint import discard_partial_writes
    from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown

    init_distributed(DistEnv.from_environ(device="cpu"), timeout_s=60)
    try:
        def refuse(path, *a, **k):
            raise PermissionError(13, "Permission denied", str(path))

        shutil.rmtree = refuse  # as a read-only directory would
        outcome = discard_partial_writes(root)
        if dist.get_rank() == 0:
            assert len(outcome) == 1 and outcome[0][0].name == "step_00000003.tmp"
            assert outcome[0][1].startswith("PermissionError"), outcome
    finally:
        teardown()


def test_a_stale_checkpoint_that_cannot_be_removed_is_not_reported_removed(tmp_path: Path) -> None:
    (tmp_path / "step_00000003.tmp").mkdir()
    run_ranks(_discard_with_failing_rmtree, 1, str(tmp_path), timeout=120)
    assert (tmp_path / "step_00000003.tmp").is_dir()


def test_make_demo_picks_a_batch_any_rank_count_divides() -> None:
    for nproc, batch in ((3, 2046), (2, 2048), (5, 2045)):
        out = subprocess.run(["make", "-s", "-n", "demo", f"NPROC={nproc}", f"PY={sys.executable}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60).stdout
        assert f"--nproc_per_node={nproc} -m dlrm_dist.train --batch-size={batch}" in out, out
