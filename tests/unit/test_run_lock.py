"""One writer per directory a command writes: the training's run and checkpoint dirs, dlrm-export's --out.

Before: a second training on a live run's directories exited 0 after interleaving metrics and
overwriting config.json, and dlrm-export wrote into an export dir being written. Now rank 0
takes the locks before anything is written and every rank learns a refusal (exit 2, the
holder's pid and host); a lock whose holder died never blocks. The two-process case through
torchrun is tests/multiprocess/test_observability.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlrm_dist.config import load_config
from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.fileio import LOCK_FILE, DirectoryBusyError, DirLock
from dlrm_dist.training.run_lock import RunLocks, written_directories
from tests.small_job import SMALL_JOB

RANK0 = DistEnv(0, 1, 0, 1, torch.device("cpu"), "gloo")
RANK1 = DistEnv(1, 2, 1, 2, torch.device("cpu"), "gloo")
BUSY = f"is in use by pid {os.getpid()} on host {socket.gethostname()}"


def _cfg(tmp_path: Path, *extra: str):
    return load_config([f"--run-dir={tmp_path / 'run'}", f"--checkpoint-dir={tmp_path / 'ckpt'}", *extra])


def test_a_run_writes_its_run_dir_and_checkpoint_dir_each_once(tmp_path: Path) -> None:
    assert [d for d, _ in written_directories(_cfg(tmp_path))] == [tmp_path / "run", tmp_path / "ckpt"]
    # evaluating a checkpoint writes metrics only
    assert [d for d, _ in written_directories(_cfg(tmp_path, "--train.inference_only=true", f"--checkpoint={tmp_path}"))] == [tmp_path / "run"]
    same = load_config([f"--run-dir={tmp_path / 'x'}", f"--checkpoint-dir={tmp_path / 'x' / '.'}"])
    assert len(written_directories(same)) == 1  # one lock: a second flock would refuse the process itself


def test_rank0_holds_both_locks_until_released(tmp_path: Path) -> None:
    with RunLocks(RANK0) as locks:
        locks.take(_cfg(tmp_path))
        locks.agree()  # no refusal: nothing raised
        for d in ("run", "ckpt"):
            with pytest.raises(DirectoryBusyError, match=f"{tmp_path / d} {BUSY} \\(dlrm-train train"):
                DirLock(tmp_path / d).acquire()
    DirLock(tmp_path / "run").acquire().release()  # released at the end of the run
    DirLock(tmp_path / "ckpt").acquire().release()


def test_other_ranks_take_no_lock(tmp_path: Path) -> None:
    locks = RunLocks(RANK1)
    locks.take(_cfg(tmp_path))
    assert locks.locks == [] and not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_busy_checkpoint_dir_is_refused_at_agree_and_the_run_dir_let_go(tmp_path: Path) -> None:
    with DirLock(tmp_path / "ckpt", "another training"):
        locks = RunLocks(RANK0)
        locks.take(_cfg(tmp_path))  # refused, but rank 0 does not leave before the others know
        assert locks.locks == []  # the run dir it had taken is free again
        with pytest.raises(DirectoryBusyError, match=f"{tmp_path / 'ckpt'} {BUSY} \\(another training\\)"):
            locks.agree()


def test_a_dead_holder_never_blocks(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'{\"pid\": %d}' % os.getpid()); print('held', flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "run" / LOCK_FILE)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryBusyError, match=f"pid {child.pid}"):
            DirLock(tmp_path / "run").acquire()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    with RunLocks(RANK0) as locks:
        locks.take(_cfg(tmp_path))
        locks.agree()
        assert len(locks.locks) == 2


def test_dlrm_train_refuses_a_busy_run_dir_before_writing_anything(tmp_path: Path, capsys) -> None:
    from dlrm_dist.train import main

    run = tmp_path / "run"
    with DirLock(run, "a live training"):
        code = main(SMALL_JOB + ["--train.steps=2", f"--run-dir={run}", f"--checkpoint-dir={tmp_path / 'ckpt'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == f"dlrm-train: error: {run} {BUSY} (a live training): one writer per directory; " \
                      "wait for it to finish or choose another directory"
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # no plan.json, config.json, metrics
    DirLock(tmp_path / "ckpt").acquire().release()  # its checkpoint dir lock was let go


def test_dlrm_export_refuses_a_busy_export_dir(tmp_path: Path, capsys) -> None:
    from dlrm_dist.cli.export_main import main

    out = tmp_path / "exported"
    with DirLock(out, "another dlrm-export"):
        code = main([str(tmp_path / "no-checkpoint"), "--out", str(out), "--no-progress"])
    assert code == 2
    assert f"dlrm-export: error: {out} {BUSY} (another dlrm-export)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
