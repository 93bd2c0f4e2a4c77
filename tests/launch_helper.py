"""Starting the launcher as a user would, and finding a rank's process (launch and fault tests).

``run_demo`` runs `make demo`'s job once (the session fixture ``demo_run`` in tests/conftest.py
shares it: the demo test reads its output, the int8 export test exports its checkpoint).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)


def _env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": VENV_BIN + os.pathsep + os.environ["PATH"], **extra}


class _Job:
    """A launcher process whose output goes to a file (pipes could fill and stall a rank)."""

    def __init__(self, args: list[str], log: Path, **env: str) -> None:
        self.log = log
        self.file = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "launch.torchrun", *args], cwd=ROOT, env=_env(**env),
                                     stdout=self.file, stderr=subprocess.STDOUT, text=True)

    def wait(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.file.close()
        return self.log.read_text()


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from a run's metrics.jsonl, which may be growing: a line still being
    written is left out. A restarted run appends, so a step's later record wins."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return {}
    lines = path.read_text().split("\n")[:-1]  # the last piece is '' or an unfinished line
    records = [json.loads(x) for x in lines if x.strip()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def _pid_of_rank(tag: str, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"DLRM_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            if b"dlrm_dist.train" in (proc / "cmdline").read_bytes():
                return int(proc.name)
    return None




@dataclass(frozen=True)
class DemoRun:
    """`make demo`'s job as run once: its run and checkpoint directories and the launcher's result."""

    run_dir: Path
    checkpoint_dir: Path
    proc: subprocess.CompletedProcess


def run_demo(out: Path, timeout: float = 900) -> DemoRun:
    """`make demo` for NPROC=2 (2 ranks, the built-in data, the default config, no progress bar), with a checkpoint written at its end: training is the same, the checkpoint is
    what the export tests read. Checked by the tests, not here (each names its own failure)."""
    run_dir, ckpt = out / "demo", out / "demo_ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "dlrm_dist.train", f"--run-dir={run_dir}", f"--checkpoint-dir={ckpt}",
           "--train.progress=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    return DemoRun(run_dir, ckpt, proc)
