"""The one place that reads the launcher's environment and creates the process group.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
On CUDA each process takes the GPU of its LOCAL_RANK and the nccl backend (as TorchRec
does); without a GPU it runs on the CPU with gloo. A plain ``python -m dlrm_dist.train``
(no launcher) is a world of one with a private rendezvous.

Restarts: torchrun's agent shares its TCP store with the workers by default and does not
separate one round's keys from the next, so after ``--max-restarts`` a restarted worker can
read a dead worker's address and fail to connect ("Gloo connectFullMesh failed ...
Connection refused", pytorch#135712). ``RESTART_SAFE_ENV`` is what the launchers in
``launch/`` give torchrun to avoid it; a worker started without it warns.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

import torch
import torch.distributed as dist


RESTART_SAFE_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def restart_hazard(environ: Mapping[str, str]) -> Optional[str]:
    """A warning if torchrun may restart these workers over its shared store, else None."""
    restarts = int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    if restarts > 0 and environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return ("torchrun --max-restarts with its shared rendezvous store: a restarted round can fail to connect "
                "(pytorch#135712). Launch with `python -m launch.torchrun` or set "
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun.")
    return None


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
    hazard = restart_hazard(os.environ)
    if hazard and env.is_main:
        warnings.warn(hazard, RuntimeWarning, stacklevel=2)
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
