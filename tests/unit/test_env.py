"""DistEnv reads torchrun's variables and picks device and backend like TorchRec."""

from __future__ import annotations

import pytest
import torch

from dlrm_dist.distributed.env import RESTART_SAFE_ENV, DistEnv, restart_hazard


def test_cpu_environment() -> None:
    env = DistEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, device="cpu")
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert env.backend == "gloo" and env.device == torch.device("cpu") and not env.is_main


def test_no_launcher_is_world_of_one() -> None:
    env = DistEnv.from_environ({}, device="cpu")
    assert (env.rank, env.world_size, env.local_world_size) == (0, 1, 1) and env.is_main


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
