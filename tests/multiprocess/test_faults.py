"""Faults under ``torchrun --max-restarts=1``: a rank killed mid-training, and a rank killed
while a checkpoint is being written. The job must restart, resume from the last complete
checkpoint and end with exactly the weights of a run that was never interrupted."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest
import torch

from dlrm_dist.checkpoint.unsharded import load_unsharded
from dlrm_dist.checkpoint.store import step_dir, tmp_dir
from tests.launch_helper import _Job, _pid_of_rank, train_losses
from tests.small_job import SMALL_JOB

pytestmark = pytest.mark.multiprocess
STEPS, EVERY = 200, 20  # enough steps after the kill that it lands mid-training
JOB = SMALL_JOB + ["--train.log_interval=1", "--train.eval_interval=0", "--synthetic.eval_batches=2",
                   "--sharding-type=table_wise", "--optim.embedding_optimizer=adagrad", "--optim.embedding_lr=0.05",
                   "--optim.dense_optimizer=adagrad", "--optim.dense_lr=0.01", f"--train.steps={STEPS}",
                   f"--train.checkpoint_interval={EVERY}", "--train.keep_last=0"]


def _start(tmp: Path, name: str, tag: str = "", restarts: int = 1) -> _Job:
    run = tmp / name
    args = ["--nproc-per-node", "2", "--max-restarts", str(restarts), "--", *JOB,
            f"--train.checkpoint_dir={run / 'ckpt'}", f"--run-dir={run}"]
    return _Job(args, tmp / f"{name}.log", DLRM_TEST_TAG=tag or uuid.uuid4().hex)


def _wait_for(what: str, job: _Job, ready: Callable[[], bool], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert job.proc.poll() is None, f"job ended before {what}:\n{job.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _kill_rank(tag: str, rank: int) -> None:
    pid = _pid_of_rank(tag, rank)
    assert pid is not None, f"rank {rank} not found"
    os.kill(pid, signal.SIGKILL)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_unsharded(step_dir(run / "ckpt", STEPS)).state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    tmp = tmp_path_factory.mktemp("faults")
    job = _start(tmp, "straight", restarts=0)
    out = job.wait(timeout=300)
    assert job.proc.returncode == 0, out[-3000:]
    return train_losses(tmp / "straight"), _final_weights(tmp / "straight")


def _assert_restarted_once(out: str) -> None:
    # torchrun names whichever worker it saw fail first: the killed one (-9), or its peer it
    # stopped meanwhile (-15, or an error from the broken connection).
    assert "failed (exitcode: " in out, out[-3000:]
    assert out.count("dlrm_dist: 2 rank(s)") == 2, out[-3000:]  # two rounds: one restart


def _assert_finished_like(run: Path, log: str, uninterrupted, resumed_from: int) -> None:
    losses, weights = uninterrupted
    assert f"loaded {step_dir(run / 'ckpt', resumed_from)} (step {resumed_from})" in log, log[-3000:]
    assert log.count("loaded ") == 1  # one restart
    mine = train_losses(run)
    assert sorted(mine) == list(range(1, STEPS + 1))
    assert mine == losses  # every step, including those before the fault, bitwise
    final = _final_weights(run)
    assert final.keys() == weights.keys()
    for key, value in final.items():
        assert torch.equal(value, weights[key]), key


def test_killed_rank_restarts_and_resumes_from_the_last_checkpoint(tmp_path: Path, uninterrupted) -> None:
    tag = uuid.uuid4().hex
    job = _start(tmp_path, "killed", tag)
    run = tmp_path / "killed"
    _wait_for("step 25", job, lambda: max(train_losses(run), default=0) >= EVERY + 5)
    _kill_rank(tag, 1)
    reached = max(train_losses(run))
    out = job.wait(timeout=300)
    assert job.proc.returncode == 0, out[-3000:]
    _assert_restarted_once(out)
    loaded = re.search(r"loaded \S+ \(step (\d+)\)", out)
    assert loaded, out[-3000:]
    resumed_from = int(loaded.group(1))
    assert EVERY <= resumed_from <= reached and resumed_from % EVERY == 0  # the newest complete one at the kill
    _assert_finished_like(run, out, uninterrupted, resumed_from)


def test_rank_killed_while_writing_a_checkpoint_leaves_the_previous_one_in_use(tmp_path: Path, uninterrupted) -> None:
    """Rank 1's data file of a coming checkpoint is a FIFO, so its write blocks until it is killed."""
    tag = uuid.uuid4().hex
    job = _start(tmp_path, "in_write", tag)
    ckpt = tmp_path / "in_write" / "ckpt"
    # Once the job runs (stale .tmp directories are removed at start-up), a whole interval
    # before the checkpoint that will block.
    _wait_for("step 22", job, lambda: max(train_losses(tmp_path / "in_write"), default=0) >= EVERY + 2)
    target = (max(train_losses(tmp_path / "in_write")) // EVERY + 2) * EVERY
    blocked = tmp_dir(ckpt, target)
    blocked.mkdir()
    os.mkfifo(blocked / "__1_0.distcp")  # DCP names rank r's data file __r_0.distcp
    _wait_for(f"rank 0's part of checkpoint {target}", job, lambda: (blocked / "__0_0.distcp").exists())
    time.sleep(1.0)
    assert not step_dir(ckpt, target).exists()  # rank 1 is stuck in the write: not published
    _kill_rank(tag, 1)
    out = job.wait(timeout=300)
    assert job.proc.returncode == 0, out[-3000:]
    _assert_restarted_once(out)
    _assert_finished_like(tmp_path / "in_write", out, uninterrupted, resumed_from=target - EVERY)
    assert f"removed {blocked}: a checkpoint a killed job did not finish" in out
    assert not blocked.exists() and (step_dir(ckpt, target) / "manifest.json").exists()
