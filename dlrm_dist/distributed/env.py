"""The one place that reads the launcher's environment and creates the process group.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
On CUDA each process takes the GPU of its LOCAL_RANK and the nccl backend (as TorchRec
does); without a GPU it runs on the CPU with gloo. A plain ``python -m dlrm_dist.train``
(no launcher) is a world of one with a private rendezvous.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Answers every question about ranks, world size and device."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_hosts(self) -> int:
        return max(1, self.world_size // self.local_world_size)

    @staticmethod
    def from_environ(environ: Optional[Mapping[str, str]] = None, device: str = "auto") -> "DistEnv":
        """Reads torchrun's variables (defaults: a world of one) and picks device and backend."""
        env = os.environ if environ is None else environ
        rank = int(env.get("RANK", 0))
        world_size = int(env.get("WORLD_SIZE", 1))
        local_rank = int(env.get("LOCAL_RANK", 0))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            return DistEnv(rank, world_size, local_rank, local_world_size,
                           torch.device("cuda", local_rank), "nccl")
        return DistEnv(rank, world_size, local_rank, local_world_size, torch.device("cpu"), "gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(env: DistEnv, timeout_s: float = 600.0) -> None:
    """Creates the default process group for ``env`` (the only call in the package)."""
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if "MASTER_ADDR" not in os.environ and env.world_size == 1:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group(
        backend=env.backend,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def teardown() -> None:
    """Destroys the process group if there is one (safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
