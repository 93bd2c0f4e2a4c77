"""CUDA tier: runs only where a GPU is present (skipped elsewhere by conftest).

What the CPU tiers cannot show (issue 24 items 6, 8 and 10): nccl bound to the rank's GPU,
the options that only act on CUDA, the prefetching pipeline on UVM-cached tables, fused
Adam resumed exactly, and embedding init written to device memory. The jobs are the GPU
acceptance script's (benchmarks/gpu_acceptance.py), so both stay one definition.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_acceptance import Acceptance, close_losses, train

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]


def test_train_on_one_gpu_with_nccl(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "dlrm_dist.train", "--train.steps=20", "--train.progress=false", f"--run-dir={tmp_path}",
           "--train.device=cuda"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["backend"] == "nccl" and summary["steps"] == 20


def test_gpu_options_tf32_bf16_qcomms(tmp_path: Path) -> None:
    """TF32 matmuls (fp32_precision API), bf16 autocast of the dense part and quantized all-to-all on a GPU."""
    from dlrm_dist.distributed.parallel import set_matmul_precision

    set_matmul_precision(True, torch.device("cuda"))
    assert torch.backends.cuda.matmul.fp32_precision == "tf32" and torch.backends.cudnn.conv.fp32_precision == "tf32"
    set_matmul_precision(False, torch.device("cuda"))
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "dlrm_dist.train", "--train.steps=20", "--train.progress=false", f"--run-dir={tmp_path}",
           "--train.tf32=true", "--train.mixed_precision=bf16", "--sharding.qcomms=bf16", "--train.device=cuda"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TF32 matmuls" in proc.stdout and "quantized all-to-all bf16" in proc.stdout


def test_fused_adam_resumes_exactly(tmp_path: Path) -> None:
    """fbgemm's Adam step counter is restored on resume: steps 16-30 equal an uninterrupted run."""
    common = ["--train.global_batch_size=128", "--sharding-type=table_wise", "--optim.embedding_optimizer=adam"]
    full = train(tmp_path / "full", common + ["--train.steps=30"], 1, "cuda")
    train(tmp_path / "a", common + ["--train.steps=15", f"--checkpoint-dir={tmp_path / 'ck'}"], 1, "cuda")
    resumed = train(tmp_path / "b", common + ["--train.steps=30", f"--checkpoint-dir={tmp_path / 'ck'}"], 1, "cuda")
    assert close_losses(resumed["losses"], full["losses"], range(16, 31), 1e-6) <= 1e-6


def test_uvm_cached_tables_train_through_the_prefetch_pipeline(tmp_path: Path) -> None:
    acceptance = Acceptance(tmp_path, gpus=1)
    plan = acceptance.mixed_plan_file()
    s = train(tmp_path / "run", ["--train.global_batch_size=128", f"--plan={plan}", "--train.steps=20"], 1, "cuda")
    assert s["steps"] == 20


def test_step_windows_in_device_time_on_a_real_gpu() -> None:
    from dlrm_dist.training.timing import WindowTimer

    timer = WindowTimer(torch.device("cuda", 0))
    timer.start()
    x = torch.randn(2048, 2048, device="cuda")
    for _ in range(10):
        x = x @ x / 2048
    assert timer.elapsed_s() > 0


def test_embedding_init_on_the_device_equals_the_cpu_values() -> None:
    from dlrm_dist.model.init import ShardFill, fill_shards

    on_gpu, on_cpu = torch.empty(70_000, 24, device="cuda"), torch.empty(70_000, 24)
    fill_shards([ShardFill(on_gpu, 3, 1_000_000, 32, 5000, 8)], seed=1, workers=4)
    fill_shards([ShardFill(on_cpu, 3, 1_000_000, 32, 5000, 8)], seed=1, workers=1)
    assert torch.equal(on_gpu.cpu(), on_cpu)
