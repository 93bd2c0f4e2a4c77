"""CUDA tier: runs only where a GPU is present (skipped elsewhere by conftest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]


def test_train_on_one_gpu_with_nccl(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "dlrm_dist.train", "--train.steps=20", "--train.progress=false", f"--run-dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["backend"] == "nccl" and summary["steps"] == 20


def test_gpu_options_tf32_bf16_qcomms(tmp_path: Path) -> None:
    """TF32 matmuls, bf16 autocast of the dense part and quantized all-to-all on a GPU."""
    import torch

    from dlrm_dist.distributed.parallel import set_matmul_precision

    set_matmul_precision(True, torch.device("cuda"))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    set_matmul_precision(False, torch.device("cuda"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "dlrm_dist.train", "--train.steps=20", "--train.progress=false", f"--run-dir={tmp_path}",
           "--train.tf32=true", "--train.mixed_precision=bf16", "--sharding.qcomms=bf16"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TF32 matmuls" in proc.stdout and "quantized all-to-all bf16" in proc.stdout
