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
from pathlib import Path

import pytest

from tests.dist_helper import run_ranks
from tests.multiprocess.train_worker import train_jobs
from tests.small_job import SMALL_JOB

pytestmark = pytest.mark.multiprocess
BASE = SMALL_JOB + ["--sharding-type=table_wise", "--train.steps=12", "--train.eval_interval=0",
                    "--synthetic.eval_batches=2"]
# One process group trains every job (a torchrun per job cost a launcher and two torch starts each).
# The float32 reference is the run that logs every step: logging at an interval changes no value
# (the second test proves it), so it serves both tests.
JOBS = {
    "every": ["--train.log_interval=1"],
    "sparse": ["--train.log_interval=5"],
    "fp16": ["--sharding.qcomms=fp16"],
    "bf16": ["--sharding.qcomms=bf16"],
    "amp": ["--train.mixed_precision=bf16"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("perf")
    run_ranks(train_jobs, 2, str(out), {name: BASE + args for name, args in JOBS.items()}, timeout=600)
    return out


def _run(out: Path, name: str) -> tuple[dict, str]:
    """A job's summary (with the losses of its metrics log as "logged") and rank 0's log lines."""
    run = out / name
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r.get("kind") == "train"]
    return {**json.loads((run / "summary.json").read_text()), "logged": losses}, (out / f"{name}.log").read_text()


def test_quantized_all_to_all_and_bf16_autocast(runs: Path) -> None:
    fp32, out = _run(runs, "every")
    assert "options:" not in out  # the reference runs without any performance option
    assert all(b > 0 for b in fp32["a2a_bytes_per_sample"])
    for q in ("fp16", "bf16"):
        s, out = _run(runs, q)
        assert f"options: quantized all-to-all {q} (forward and backward)" in out
        assert s["final_loss"] < s["first_loss"] and abs(s["final_loss"] - fp32["final_loss"]) < 0.05
        # pooled embeddings travel in 16 bits: fewer bytes received per sample on every rank
        assert all(a < b for a, b in zip(s["a2a_bytes_per_sample"], fp32["a2a_bytes_per_sample"])), (s, fp32)
    s, out = _run(runs, "amp")
    assert "dense part in bf16 autocast" in out
    assert s["final_loss"] < s["first_loss"] and abs(s["final_loss"] - fp32["final_loss"]) < 0.05


def test_losses_gathered_per_interval_equal_per_step_ones(runs: Path) -> None:
    every, _ = _run(runs, "every")
    sparse, _ = _run(runs, "sparse")
    assert len(every["logged"]) == 12 and len(sparse["logged"]) == 3  # steps 5, 10, 12
    assert sparse["logged"] == [every["logged"][4], every["logged"][9], every["logged"][11]]
    assert sparse["final_loss"] == every["final_loss"]
