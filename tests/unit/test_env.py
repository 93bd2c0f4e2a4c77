"""DistEnv reads torchrun's variables and picks device and backend like TorchRec; the stack
facts say why a GPU is unusable (issue 24 items 1 and 8, on CPU with torch.cuda monkeypatched)."""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from dlrm_dist.distributed import env as env_module
from dlrm_dist.distributed import stack as stack_module
from dlrm_dist.distributed.env import (
    RESTART_SAFE_ENV, DeviceError, DistEnv, init_distributed, pg_timeout_s, restart_hazard,
)
from dlrm_dist.distributed.stack import Stack

OLD_DRIVER = Stack(torch_version="2.13.0", torch_cuda="13.0", cuda_available=False, device_count=0,
                   driver="535.104.05", fbgemm={"fbgemm-gpu": "1.8.0"})


@pytest.fixture
def gpus(monkeypatch) -> list:
    """Pretends torch sees 4 GPUs; records set_device calls (nothing else may touch CUDA)."""
    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
    return calls


def test_cpu_environment() -> None:
    env = DistEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, device="cpu")
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert env.backend == "gloo" and env.device == torch.device("cpu") and not env.is_main


def test_no_launcher_is_world_of_one() -> None:
    env = DistEnv.from_environ({}, device="cpu")
    assert (env.rank, env.world_size, env.local_world_size) == (0, 1, 1) and env.is_main


def test_gpu_rank_binds_its_device_before_anything_else(gpus: list) -> None:
    env = DistEnv.from_environ({"RANK": "7", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"})
    assert env.backend == "nccl" and env.device == torch.device("cuda", 3)
    assert gpus == [("set_device", torch.device("cuda", 3))]  # at construction: planning comes next
    assert DistEnv.from_environ({"LOCAL_RANK": "3"}, device="cpu").device.type == "cpu"  # cpu never uses a GPU


def test_local_rank_beyond_the_visible_gpus_fails_naming_both(gpus: list) -> None:
    with pytest.raises(DeviceError, match=r"LOCAL_RANK=5 but this process sees 4 GPU\(s\).*--nproc_per_node=4"):
        DistEnv.from_environ({"LOCAL_RANK": "5"}, device="cuda")


def test_cuda_without_a_usable_gpu_fails_naming_driver_and_builds(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(stack_module, "probe", lambda run_kernels=True: OLD_DRIVER)
    with pytest.raises(DeviceError) as e:
        DistEnv.from_environ({}, device="cuda")
    msg = str(e.value)
    assert "NVIDIA driver 535.104.05" in msg and "CUDA 13.0" in msg and "R580" in msg and "fbgemm-gpu 1.8.0" in msg
    assert "train.device=cpu" in msg and e.value.exit_code == 4


def test_auto_on_a_machine_with_an_unusable_driver_warns(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(stack_module, "driver_version", lambda *a: "535.104.05")
    monkeypatch.setattr(stack_module, "probe", lambda run_kernels=True: OLD_DRIVER)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.warns(RuntimeWarning, match=r"runs on the CPU: an NVIDIA driver \(535.104.05\) is loaded"):
        env = DistEnv.from_environ({}, device="auto")
    assert env.device.type == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose (the CPU test tiers): no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DistEnv.from_environ({}, device="auto").device.type == "cpu"


def test_init_distributed_binds_nccl_to_the_device_with_a_timeout_covering_init(gpus: list, monkeypatch) -> None:
    seen: dict = {}
    monkeypatch.setattr(env_module.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.delenv(env_module.PG_TIMEOUT_ENV, raising=False)
    env = DistEnv.from_environ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    init_distributed(env)
    assert seen["backend"] == "nccl" and seen["device_id"] == torch.device("cuda", 1)
    assert seen["timeout"] == timedelta(seconds=1800)
    assert gpus == [("set_device", torch.device("cuda", 1))] * 2
    assert pg_timeout_s({env_module.PG_TIMEOUT_ENV: "3600"}) == 3600
    with pytest.raises(DeviceError, match="DLRM_DIST_PG_TIMEOUT_S='soon' must be a number"):
        pg_timeout_s({env_module.PG_TIMEOUT_ENV: "soon"})


def test_model_seed_does_not_touch_cuda(gpus: list, monkeypatch) -> None:
    """fork_rng(devices=[]): with GPUs visible, building the model must not create CUDA contexts."""
    from dlrm_dist.config import load_config
    from dlrm_dist.model import build_model
    from dlrm_dist.training.build import resolve

    def touched(*a, **k):
        raise AssertionError("the model's seed touched CUDA")

    monkeypatch.setattr(torch.cuda, "get_rng_state", touched)
    monkeypatch.setattr(torch.cuda, "set_rng_state", touched)
    _, _, spec = resolve(load_config(["--data.schema=demo:table_sizes=20/30", "--model.embedding_dim=8",
                                      "--model.bottom_mlp=13-8", "--model.top_mlp=4-1"]))
    build_model(spec, seed=0)


def test_stack_problems_name_every_mismatch() -> None:
    assert any("R580" in p and "535.104.05" in p for p in OLD_DRIVER.problems("cuda"))
    both = Stack("2.13.0+cpu", None, False, 0, None, {"fbgemm-gpu": "1.8.0", "fbgemm-gpu-cpu": "1.8.0"})
    cpu_problems = both.problems("cpu")
    assert len(cpu_problems) == 1 and "two fbgemm builds" in cpu_problems[0]
    cuda_problems = both.problems("cuda")
    assert any("CPU build" in p for p in cuda_problems) and any("two fbgemm" in p for p in cuda_problems)
    broken = Stack("2.13.0", "13.0", True, 8, "580.65.06", {"fbgemm-gpu": "1.8.0"}, "RuntimeError: no kernel image")
    assert broken.problems("cuda") == ["fbgemm's CUDA kernels do not run: RuntimeError: no kernel image"]
    assert broken.problems("cuda", need_gpu=False) == []  # an image built without a GPU checks the builds only
    good = Stack("2.13.0", "13.0", True, 8, "580.65.06", {"fbgemm-gpu": "1.8.0"}, "ok")
    assert good.problems("cuda") == [] and "8 GPU(s) usable" in good.describe()


def test_driver_version_read_from_the_kernel_module(tmp_path: Path) -> None:
    f = tmp_path / "version"
    f.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\nGCC version: 12\n")
    assert stack_module.driver_version(f) == "580.65.06"
    f.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023\n")
    assert stack_module.driver_version(f) == "535.104.05"


def test_stack_cli_on_this_machine(capsys) -> None:
    """The check `make install` runs: this CPU venv is usable for cpu, not for cuda (every reason named)."""
    assert stack_module.main(["--device", "cpu"]) == 0
    assert "stack ok for cpu" in capsys.readouterr().out
    assert stack_module.main(["--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "CPU build" in err and "fbgemm-gpu (the CUDA build of fbgemm) is not installed" in err


@pytest.mark.cuda
def test_cuda_uses_nccl_and_local_rank_device() -> None:
    env = DistEnv.from_environ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert env.backend == "nccl" and env.device == torch.device("cuda", 0)


def test_restarts_over_the_shared_store_are_flagged() -> None:
    shared = {"TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_USE_AGENT_STORE": "True"}
    assert "pytorch#135712" in restart_hazard(shared)
    assert restart_hazard({**shared, "TORCHELASTIC_USE_AGENT_STORE": "False"}) is None  # private store per round
    assert restart_hazard({**shared, "TORCHELASTIC_MAX_RESTARTS": "0"}) is None
    assert restart_hazard({}) is None
    assert RESTART_SAFE_ENV == {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def test_tests_not_marked_cuda_run_on_the_cpu_in_process_and_in_subprocesses() -> None:
    """conftest's pin: on a GPU machine the CPU tiers would otherwise pick cuda:N / nccl (item 3)."""
    import subprocess
    import sys

    assert torch.cuda.is_available() is False and DistEnv.from_environ({}).device.type == "cpu"
    out = subprocess.run([sys.executable, "-c", "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"],
                         capture_output=True, text=True, timeout=60).stdout.strip()
    assert out == "''"
