"""The one place that reads the launcher's environment, picks the device and creates the process group.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
``train.device`` decides the device: ``cuda`` (fail at once, naming the driver and the torch
and fbgemm builds, when CUDA is unusable), ``cpu``, or ``auto`` (CUDA when torch sees a
GPU; a machine whose NVIDIA driver is loaded but unusable by this torch is warned about,
never silently trained on the CPU). On CUDA each process takes the GPU of its LOCAL_RANK
and binds to it (``torch.cuda.set_device``) before anything touches CUDA, and the nccl
group is created for that device (``device_id``), as TorchRec's reference trainer does.
A plain ``python -m dlrm_dist.train`` (no launcher) is a world of one with a private rendezvous.

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

from dlrm_dist.distributed import stack as stack_facts
from dlrm_dist.errors import EXIT_BAD_STATE, DlrmError

RESTART_SAFE_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
DEVICES = ("auto", "cpu", "cuda")
# The process group's timeout bounds every collective, the first one included, which waits
# for the slowest rank to shard and initialise its tables (benchmarks/init_throughput.py):
# 30 minutes, as torch's own default for gloo, unless DLRM_DIST_PG_TIMEOUT_S says otherwise.
PG_TIMEOUT_ENV = "DLRM_DIST_PG_TIMEOUT_S"
DEFAULT_PG_TIMEOUT_S = 1800.0


class DeviceError(DlrmError):
    """The requested device cannot be used here; the message names the driver and the builds found."""

    exit_code = EXIT_BAD_STATE


def restart_hazard(environ: Mapping[str, str]) -> Optional[str]:
    """A warning if torchrun may restart these workers over its shared store, else None."""
    restarts = int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    if restarts > 0 and environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return ("torchrun --max-restarts with its shared rendezvous store: a restarted round can fail to connect "
                "(pytorch#135712). Launch with `python -m launch.torchrun` or set "
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun.")
    return None


def gpu_unusable_reason() -> Optional[str]:
    """Why an NVIDIA driver is loaded but torch cannot use it (None: no driver, CUDA works, or
    the GPUs are hidden on purpose with an empty CUDA_VISIBLE_DEVICES)."""
    if torch.cuda.is_available() or os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return None
    driver = stack_facts.driver_version()
    if driver is None:
        return None
    return (f"an NVIDIA driver ({driver}) is loaded but torch.cuda.is_available() is False: "
            + stack_facts.probe(run_kernels=False).describe()
            + f". PyPI's torch {torch.__version__} needs driver {stack_facts.CUDA_DRIVER_NEEDED} or newer")


def resolve_device(requested: str, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank`` for ``train.device=requested``.

    Raises DeviceError for ``cuda`` without a usable GPU (naming why) and for a LOCAL_RANK
    beyond the GPUs this process sees.
    """
    if requested not in DEVICES:
        raise DeviceError(f"train.device={requested!r}; choose one of {', '.join(DEVICES)}")
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == "cuda":
            facts = stack_facts.probe(run_kernels=False)
            problems = "; ".join(facts.problems("cuda")) or "torch.cuda.is_available() is False"
            raise DeviceError(f"train.device=cuda but CUDA is unusable here: {problems} ({facts.describe()}). "
                              "Use train.device=cpu to train on the CPU")
        reason = gpu_unusable_reason()
        if reason:
            warnings.warn(f"train.device=auto runs on the CPU: {reason}; set train.device=cpu to silence this "
                          "or train.device=cuda to fail instead", RuntimeWarning, stacklevel=3)
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DeviceError(f"LOCAL_RANK={local_rank} but this process sees {count} GPU(s) "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start at most "
                          f"{count} rank(s) per node (torchrun --nproc_per_node={count})")
    return torch.device("cuda", local_rank)


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
        """Reads torchrun's variables (defaults: a world of one), picks device and backend, and
        binds this process to its GPU before anything else touches CUDA."""
        env = os.environ if environ is None else environ
        rank = int(env.get("RANK", 0))
        world_size = int(env.get("WORLD_SIZE", 1))
        local_rank = int(env.get("LOCAL_RANK", 0))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
        chosen = resolve_device(device, local_rank)
        if chosen.type == "cuda":
            # Without this every rank's first CUDA call (planning reads the device's memory)
            # creates a context on GPU 0.
            torch.cuda.set_device(chosen)
            return DistEnv(rank, world_size, local_rank, local_world_size, chosen, "nccl")
        return DistEnv(rank, world_size, local_rank, local_world_size, chosen, "gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_timeout_s(environ: Mapping[str, str]) -> float:
    raw = environ.get(PG_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_PG_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DeviceError(f"{PG_TIMEOUT_ENV}={raw!r} must be a number of seconds > 0")
    return value


def init_distributed(env: DistEnv, timeout_s: Optional[float] = None) -> None:
    """Creates the default process group for ``env`` (the only call in the package)."""
    device_id = None
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
        device_id = env.device  # nccl binds its communicator to this GPU at once (no guessing later)
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
        timeout=timedelta(seconds=timeout_s if timeout_s is not None else pg_timeout_s(os.environ)),
        device_id=device_id,
    )


def teardown() -> None:
    """Destroys the process group if there is one (safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
