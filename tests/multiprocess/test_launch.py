"""Launching: the torchrun wrapper (one node, several nodes, a killed rank), torchx
(local_cwd end to end; Kubernetes and Slurm dry runs), and the Docker image's pins."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest

from launch.torchrun import build_command
from tests.dist_helper import free_port
from tests.launch_helper import _env, _Job, _pid_of_rank, train_losses
from tests.small_job import SMALL_JOB

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = str(Path(sys.executable).parent)
SMALL = SMALL_JOB + ["--train.log_interval=1"]


def _losses(run_dir: Path) -> list[float]:
    return [loss for _, loss in sorted(train_losses(run_dir).items())]


def test_command_for_one_and_many_nodes() -> None:
    cmd, say = build_command(["--", "--steps", "3"], {}, gpus=0)
    assert "--standalone" in cmd and "--nproc_per_node=2" in cmd and cmd[-3:] == ["dlrm_dist.train", "--steps", "3"]
    assert "gloo" in say and "no GPU" in say
    cmd, say = build_command([], {"NNODES": "4", "MASTER_ADDR": "10.1.2.3", "NODE_RANK": "2"}, gpus=8)
    assert {"--nnodes=4", "--rdzv_backend=c10d", "--rdzv_endpoint=10.1.2.3:29500", "--node_rank=2",
            "--nproc_per_node=8"} <= set(cmd)
    assert "nccl on 8 GPU(s)" in say
    with pytest.raises(SystemExit, match="need --rdzv-endpoint"):
        build_command(["--nnodes", "2"], {}, gpus=0)


def test_dry_run_prints_the_command_with_its_restart_safe_environment(capsys) -> None:
    from launch.torchrun import main

    assert main(["--max-restarts", "1", "--dry-run", "--", "--steps", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()[-1].split()
    assert printed[:2] == ["env", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"] and "--max_restarts=1" in printed
    assert printed[-3:] == ["dlrm_dist.train", "--steps", "3"]


def test_two_nodes_equal_one_node(tmp_path: Path) -> None:
    """Two torchrun agents (one rank each, c10d on 127.0.0.1) train exactly like one node with two ranks."""
    common = SMALL + ["--sharding-type=table_wise", "--train.steps=8", "--train.eval_interval=0"]
    port = free_port()
    job_id = uuid.uuid4().hex[:8]
    agents = [_Job(["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(r), "--rdzv-endpoint",
                    f"127.0.0.1:{port}", "--job-id", job_id, "--", *common, f"--run-dir={tmp_path / 'two'}"],
                   tmp_path / f"agent{r}.log") for r in range(2)]
    outs = [a.wait(timeout=300) for a in agents]
    assert [a.proc.returncode for a in agents] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert "c10d rendezvous at 127.0.0.1" in outs[0] and "gloo" in outs[0]
    one = _Job(["--nproc-per-node", "2", "--", *common, f"--run-dir={tmp_path / 'one'}"], tmp_path / "one.log")
    out = one.wait(timeout=300)
    assert one.proc.returncode == 0, out[-2000:]
    two_nodes, one_node = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert len(two_nodes) == len(one_node) == 8
    assert two_nodes == pytest.approx(one_node, abs=1e-6)


def test_killed_rank_ends_the_job_with_the_rank_named(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    job = _Job(["--nproc-per-node", "2", "--", *SMALL, "--train.steps=1000000", f"--run-dir={tmp_path}"],
               tmp_path / "job.log", DLRM_TEST_TAG=tag)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not ((tmp_path / "metrics.jsonl").exists()
                                                and len(_losses(tmp_path)) >= 3):
        assert job.proc.poll() is None, job.log.read_text()[-2000:]
        time.sleep(0.5)
    pid = _pid_of_rank(tag, 1)
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    out = job.wait(timeout=120)
    assert job.proc.returncode != 0
    assert time.monotonic() - killed < 120  # ended, no hang
    assert re.search(r"rank\s*:\s*1", out) and "SIGKILL" in out, out[-3000:]


def test_torchx_local_cwd_trains(tmp_path: Path) -> None:
    cmd = ["torchx", "run", "-s", "local_cwd", "launch/components.py:trainer", "--nproc_per_node", "2", "--",
           *SMALL, "--train.steps=4", f"--run-dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "SUCCEEDED" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4


def _dryrun(scheduler: str, *args: str) -> str:
    cmd = ["torchx", "run", "--workspace", "", "--dryrun", "-s", scheduler, "launch/components.py:trainer", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


JOB = ["--nnodes", "2", "--nproc_per_node", "8", "--gpu", "8", "--cpu", "32", "--memMB", "400000",
       "--image", "registry.example/dlrm_dist:1.0", "--data", "/mnt/criteo:/data", "--",
       "--data", "columnar", "--data-dir", "/data", "--steps", "1000"]


def test_kubernetes_dryrun_renders_the_job() -> None:
    import yaml

    out = _dryrun("kubernetes", *JOB)
    request = yaml.safe_load(out.split("=== SCHEDULER REQUEST ===", 1)[1])
    tasks = request["spec"]["tasks"]
    assert request["kind"] == "Job" and len(tasks) == 2 and sum(t["replicas"] for t in tasks) == 2
    for t in tasks:
        c = t["template"]["spec"]["containers"][0]
        assert c["image"] == "registry.example/dlrm_dist:1.0"
        limits = c["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "8" and limits["cpu"] in ("32", "32000m") and limits["memory"].startswith("400000")
        command = " ".join(c["command"])
        assert "--nnodes 2 --nproc_per_node 8" in command and "-m dlrm_dist.train --data columnar --data-dir /data --steps 1000" in command
        assert any(m["mountPath"] == "/data" for m in c["volumeMounts"])
        assert {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"} in c["env"]  # restart-safe rendezvous


def test_slurm_dryrun_renders_the_job() -> None:
    out = _dryrun("slurm", *JOB)
    sbatch = [line for line in out.splitlines() if line.startswith("#SBATCH --job-name")]
    assert len(sbatch) == 2  # one het-job group per node
    assert all("--gpus-per-task=8" in s and "--cpus-per-task=32" in s and "--mem=400000" in s for s in sbatch)
    request = out.split("=== SCHEDULER REQUEST ===", 1)[1]
    assert request.count("--nnodes 2 --nproc_per_node 8") == 2 and "-m dlrm_dist.train --data columnar" in request


def test_docker_image_takes_its_pins_from_pyproject() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # Every dependency is pinned exactly, in one place.
    pins = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    assert all("==" in d for d in pins), [d for d in pins if "==" not in d]
    # The image installs through the Makefile, which reads pyproject.toml: no version of its own...
    assert "make install DEVICE=cuda" in dockerfile and "make install DEVICE=cpu" in dockerfile
    assert not re.search(r"pip install[^\n]*==", dockerfile)
    makefile = (ROOT / "Makefile").read_text()
    assert "tomllib.load(open('pyproject.toml'" in makefile and "torchrec" in makefile
    # ...and its Python is the one pyproject requires.
    assert "python:3.11" in dockerfile and ">=3.11,<3.12" in project["requires-python"]
    # The default (last) target is CUDA.
    assert [m for m in re.findall(r"^FROM .* AS (\w+)", dockerfile, re.M)][-1] == "cuda"


def test_only_the_leading_separator_is_dropped() -> None:
    cmd, _ = build_command(["--", "--train.run_dir", "--", "--steps", "3"], {}, gpus=0)
    assert cmd[-5:] == ["dlrm_dist.train", "--train.run_dir", "--", "--steps", "3"]


def _plan_sync_rank(out_dir: str, memories: list[int], args: list[list[str]]) -> None:
    """One rank of the plan-agreement test: told its own memory (and, rank 1, another plan source)."""
    import logging

    from dlrm_dist.config import load_config
    from dlrm_dist.distributed import resources
    from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
    from dlrm_dist.distributed.plan_sync import agree_on_plan, plan_digest
    from dlrm_dist.training.build import prepare

    rank = int(os.environ["RANK"])
    resources.host_memory_bytes = lambda *a: memories[rank]
    env = DistEnv.from_environ(device="cpu")
    prepared = prepare(load_config(SMALL_JOB + args[rank]), env)
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    plan_logger = logging.getLogger("dlrm_dist.distributed.plan_sync")
    plan_logger.addHandler(handler)
    plan_logger.setLevel(logging.WARNING)  # the ranks' package logger is quiet outside a run
    init_distributed(env, timeout_s=60)
    try:
        chosen = agree_on_plan(prepared.plan_file, env, prepared.model)
    finally:
        teardown()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
        "own": plan_digest(prepared.plan_file), "chosen": plan_digest(chosen),
        "ddr_gb": chosen.inputs.topology.ddr_gb, "warnings": warnings}))


def test_ranks_that_plan_differently_all_take_rank_0s_plan(tmp_path: Path) -> None:
    """Two ranks told different host memory (and rank 1 another plan source) shard by one plan (item 4)."""
    from tests.dist_helper import run_ranks

    gb = 1024**3
    run_ranks(_plan_sync_rank, 2, str(tmp_path), [64 * gb, 16 * gb], [[], ["--sharding-type=row_wise"]], timeout=180)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["own"] != r1["own"]  # left alone, the ranks would shard by different plans
    assert r0["chosen"] == r1["chosen"] == r0["own"] and r1["ddr_gb"] == r0["ddr_gb"] > 60
    assert len(r0["warnings"]) == 1 and "rank(s) 1 planned differently from rank 0" in r0["warnings"][0]
    assert "host memory 64.0 GB" in r0["warnings"][0] and not r1["warnings"]
