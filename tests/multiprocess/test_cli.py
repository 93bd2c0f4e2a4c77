"""The trainer through its real command line, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlrm_dist.metrics.log import read_metrics
from tests.launch_helper import DemoRun
from tests.sample_data import criteo_sample
from tests.cli_helper import export_and_predict_here, ok_here

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
SMALL = ["--data.schema=demo:table_sizes=100/200/50", "--model.bottom_mlp=13-16-8", "--model.embedding_dim=8",
         "--model.top_mlp=16-1", "--train.global_batch_size=64", "--train.progress=false"]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_demo_reaches_teacher_auc(demo_run: DemoRun) -> None:
    """`make demo`'s job: 2 ranks, built-in data; AUC within 0.02 of the teacher's (the session's one run)."""
    run_dir, proc = demo_run.run_dir, demo_run.proc
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "by sharding type:" in out and "t_cat_25" in out  # the plan summary
    assert "eval AUC" in out and "samples/s" in out and "log-loss" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 800
    assert summary["teacher_auc"] - summary["eval_auc"] <= 0.02, summary
    assert summary["final_loss"] < summary["first_loss"] - 0.1
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [200, 400, 600, 800]
    assert all({"loss", "samples_per_s"} <= set(r) for r in train) and train[-1]["step"] == 800
    assert all(0.5 < r["auc"] <= 1 and r["logloss"] > 0 for r in evals)


def test_single_process_without_launcher(tmp_path: Path) -> None:
    proc = _run([sys.executable, "-m", "dlrm_dist.train", *SMALL, "--train.steps=5", f"--run-dir={tmp_path}"], 300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 5


def test_dcn_adam_mse_schedule_multihot_trains(tmp_path: Path) -> None:
    """The other model and optimizer options run through the real trainer on 2 ranks.

    (Adam for embeddings runs on CPU only for replicated tables: fbgemm has no fused CPU Adam.)
    """
    args = ["--model.interaction=dcn", "--model.dcn_num_layers=2", "--model.dcn_low_rank_dim=8",
            "--model.loss=mse", "--optim.embedding_optimizer=adam", "--optim.dense_optimizer=adam",
            "--optim.embedding_lr=0.01", "--optim.dense_lr=0.001", "--sharding-type=data_parallel", "--optim.warmup_steps=5",
            "--optim.decay_start_step=20", "--optim.decay_steps=20", "--synthetic.pooling_factor=3",
            "--synthetic.variable_pooling=true", "--train.steps=40", "--train.eval_interval=20", "--train.log_interval=10"]
    proc = _run(TORCHRUN + ["--nproc_per_node=2", "-m", "dlrm_dist.train", *SMALL, *args, f"--run-dir={tmp_path}"], 300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"]
    records = read_metrics(tmp_path / "metrics.jsonl")
    factors = {r["step"]: r["lr_factor"] for r in records if r["kind"] == "train"}
    assert factors[10] == 1.0 and factors[30] < 0.5 and factors[40] < 0.01  # warmup done, then decayed
    assert [r["step"] for r in records if r["kind"] == "eval"] == [20, 40]


def test_bad_input_fails_fast_on_every_rank(tmp_path: Path) -> None:
    start = time.monotonic()
    # torchrun stops the other ranks as soon as it sees one fail: a slow monitor lets every rank
    # print its own refusal first (on a loaded machine one rank could be stopped mid-validation).
    proc = _run(TORCHRUN + ["--monitor-interval=5", "--nproc_per_node=2", "-m", "dlrm_dist.train", *SMALL,
                            "--train.global_batch_size=63", f"--run-dir={tmp_path}"], timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("train.global_batch_size=63 is not divisible by the world size 2") == 2
    assert time.monotonic() - start < 120  # no collective was ever entered, so no hang
    assert not (tmp_path / "metrics.jsonl").exists()


def test_train_with_plan_file_then_inspect_measured(tmp_path: Path) -> None:
    plan = ROOT / "sharding_plans" / "demo_cpu2.json"
    proc = _run(TORCHRUN + ["--nproc_per_node=2", "-m", "dlrm_dist.train", f"--plan={plan}", "--train.steps=6",
                            "--train.global_batch_size=256", "--synthetic.eval_batches=1", "--train.progress=false",
                            f"--run-dir={tmp_path}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 6 and len(summary["rank_step_ms"]) == 2
    from dlrm_dist.cli.plan_main import main as plan_main

    inspect = ok_here(plan_main, "inspect", str(plan), "--measured", str(tmp_path), "--json")
    assert json.loads(inspect)["measured_step_ms"] == summary["rank_step_ms"]


def test_mismatched_plan_file_is_refused_before_training(tmp_path: Path) -> None:
    plan = ROOT / "sharding_plans" / "criteo_kaggle_gpu2.json"  # other tables, and for GPUs
    proc = _run(TORCHRUN + ["--nproc_per_node=2", "-m", "dlrm_dist.train", f"--plan={plan}", f"--run-dir={tmp_path}"], 300)
    assert proc.returncode != 0
    err = proc.stderr
    assert "does not match this job" in err and "different rows or dim" in err
    assert "placed on cuda, but this job runs on cpu" in err
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("nproc, split", [(1, "val"), (2, "test")])
def test_train_on_real_criteo_sample(tmp_path: Path, nproc: int, split: str) -> None:
    from dlrm_dist.cli.data_main import main as data_main

    sample = criteo_sample()
    data = tmp_path / "criteo"
    assert data_main(["preprocess", "--schema", "criteo:days=7,buckets=1000", "--input", str(sample), "--out", str(data),
                      "--no-progress"]) == 0
    proc = _run(TORCHRUN + [f"--nproc_per_node={nproc}", "-m", "dlrm_dist.train", "--data", "columnar", "--data-dir", str(data),
                            f"--data.eval_split={split}", "--model.bottom_mlp=13-32-16", "--model.top_mlp=32-1",
                            "--train.global_batch_size=16", "--train.steps=12", "--train.eval_interval=6",
                            "--train.progress=false", f"--run-dir={tmp_path / 'run'}",
                            f"--checkpoint-dir={tmp_path / 'ckpt'}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["teacher_auc"] is None
    assert 0.0 <= summary["eval_auc"] <= 1.0 and summary["eval_logloss"] > 0
    assert len(summary["evals"]) == 2
    # served: the export scores the Criteo days as training evaluated them
    scored = export_and_predict_here(tmp_path / "ckpt", tmp_path / "export", data, split)
    assert scored["metrics"]["auc"] == pytest.approx(summary["eval_auc"], abs=1e-6)
    assert scored["metrics"]["logloss"] == pytest.approx(summary["eval_logloss"], abs=1e-6)
