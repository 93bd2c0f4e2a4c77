"""Performance options through the real trainer on 2 CPU ranks: what runs on CPU is run.

- quantized all-to-all (QCommsConfig fp16/bf16): trains, and the measured bytes of the
  embedding exchange fall against the float32 run;
- bf16 autocast of the dense part: trains to a loss close to the float32 run's;
- the per-step losses are gathered at log intervals (no host sync per step) and equal the
  per-step losses of a run that logs every step.
TF32 has no CPU effect (tests/test_cuda.py covers the flag on a GPU); torch.compile is
measured in benchmarks/train_vs_references.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.small_job import SMALL_JOB

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
BASE = SMALL_JOB + ["--sharding-type=table_wise", "--train.steps=12", "--train.eval_interval=0",
                    "--synthetic.eval_batches=2"]


def _train(tmp_path: Path, name: str, *args: str) -> tuple[dict, str]:
    run = tmp_path / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "dlrm_dist.train", *BASE, *args, f"--run-dir={run}"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r.get("kind") == "train"]
    return {**json.loads((run / "summary.json").read_text()), "logged": losses}, proc.stdout


def test_quantized_all_to_all_and_bf16_autocast(tmp_path: Path) -> None:
    fp32, _ = _train(tmp_path, "fp32")
    assert all(b > 0 for b in fp32["a2a_bytes_per_sample"])
    for q in ("fp16", "bf16"):
        s, out = _train(tmp_path, q, f"--sharding.qcomms={q}")
        assert f"options: quantized all-to-all {q} (forward and backward)" in out
        assert s["final_loss"] < s["first_loss"] and abs(s["final_loss"] - fp32["final_loss"]) < 0.05
        # pooled embeddings travel in 16 bits: fewer bytes received per sample on every rank
        assert all(a < b for a, b in zip(s["a2a_bytes_per_sample"], fp32["a2a_bytes_per_sample"])), (s, fp32)
    s, out = _train(tmp_path, "amp", "--train.mixed_precision=bf16")
    assert "dense part in bf16 autocast" in out
    assert s["final_loss"] < s["first_loss"] and abs(s["final_loss"] - fp32["final_loss"]) < 0.05


def test_losses_gathered_per_interval_equal_per_step_ones(tmp_path: Path) -> None:
    every, _ = _train(tmp_path, "every", "--train.log_interval=1")
    sparse, _ = _train(tmp_path, "sparse", "--train.log_interval=5")
    assert len(every["logged"]) == 12 and len(sparse["logged"]) == 3  # steps 5, 10, 12
    assert sparse["logged"] == [every["logged"][4], every["logged"][9], every["logged"][11]]
    assert sparse["final_loss"] == every["final_loss"]
