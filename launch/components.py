"""torchx component for dlrm_dist: ``torchx run launch/components.py:trainer ...``.

(Annotations stay real types here: torchx reads them to parse the command line.)
A thin layer over torchx's own ``dist.ddp`` component (torchrun with c10d rendezvous on the
rank-0 host, one replica per node), adding the trainer's entry point, its config file and
overrides, mounts for data and checkpoints, and a role shaped for the device:

- CPU ranks (``--gpu 0``): 2 ranks, 2 CPUs and 8 GB per node unless given.
- GPUs (``--gpu N``): one rank per GPU, ``CPUS_PER_GPU`` CPUs and ``MEM_MB_PER_GPU`` MB of host
  memory per GPU unless given (the batch-building threads, the pinned input buffers and the
  UVM tables live in host memory), and ``--train.device=cuda`` so that a node without usable
  CUDA fails at once instead of training on its CPU. Kubernetes gets a memory-backed
  /dev/shm from torchx itself; ``--devices /dev/infiniband`` passes RDMA devices in (NCCL over
  InfiniBand/RoCE) and ``--env NCCL_SOCKET_IFNAME=eth0,NCCL_IB_HCA=mlx5`` NCCL's settings.

A plan file named in the overrides must fit ``nnodes`` x ``nproc_per_node`` (dlrm_dist/distributed/plan_shape.py).
No training logic lives here.
"""


from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components import dist

from dlrm_dist.distributed.env import RESTART_SAFE_ENV
from dlrm_dist.distributed.plan_shape import check_plan_shape

TRAIN_MODULE = "dlrm_dist.train"
DEFAULT_IMAGE = "dlrm_dist:latest"
CPU_ROLE = {"nproc_per_node": 2, "cpu": 2, "memMB": 8192}
CPUS_PER_GPU = 8  # an 8-GPU H100/H200 node has 96-224 cores: 64 of them leave room for the system
MEM_MB_PER_GPU = 64_000  # 512 GB for 8 GPUs, of the 1-2 TB such nodes have


def _bind(mount: str, default_dst: str) -> List[str]:
    """``HOST_PATH[:CONTAINER_PATH]`` -> torchx's bind-mount spec."""
    src, _, dst = mount.partition(":")
    return ["type=bind", f"src={src}", f"dst={dst or default_dst}"]


def _device_mount(device: str) -> List[str]:
    """``/dev/infiniband[:CONTAINER_PATH]`` -> torchx's device-mount spec (read, write, mknod)."""
    src, _, dst = device.partition(":")
    return ["type=device", f"src={src}", f"dst={dst or src}", "perm=rwm"]


def role_shape(gpu: int, nproc_per_node: Optional[int], cpu: Optional[int], memMB: Optional[int]) -> Dict[str, int]:
    """Ranks, CPUs and memory per node: given values win, the rest follow the device."""
    if gpu > 0:
        defaults = {"nproc_per_node": gpu, "cpu": CPUS_PER_GPU * gpu, "memMB": MEM_MB_PER_GPU * gpu}
    else:
        defaults = dict(CPU_ROLE)
    given = {"nproc_per_node": nproc_per_node, "cpu": cpu, "memMB": memMB}
    # torchx passes Optional[int] arguments from its command line as strings.
    return {k: int(v) if v is not None else defaults[k] for k, v in given.items()}


def _device_args(gpu: int, overrides: List[str]) -> List[str]:
    if gpu > 0 and not any(a.startswith("--train.device") for a in overrides):
        return ["--train.device=cuda"]
    return []


def trainer(
    *overrides: str,
    nnodes: int = 1,
    nproc_per_node: Optional[int] = None,
    image: str = DEFAULT_IMAGE,
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    config: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    data: Optional[str] = None,
    checkpoints: Optional[str] = None,
    mounts: Optional[List[str]] = None,
    devices: Optional[List[str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    name: str = "dlrm",
) -> specs.AppDef:
    """Hybrid-parallel DLRM training with dlrm_dist on nnodes x nproc_per_node ranks.

    Args:
        overrides: trainer arguments, e.g. --steps 1000 --data columnar --data-dir /data
        nnodes: number of nodes (replicas)
        nproc_per_node: ranks per node (default: one per GPU, else 2 CPU ranks)
        image: container image with dlrm_dist installed (the cwd for local_cwd)
        cpu: CPUs per node (default: 8 per GPU, else 2)
        gpu: GPUs per node (0: CPU ranks over gloo; N: nccl, and the trainer requires CUDA)
        memMB: memory per node in MB (default: 64000 per GPU, else 8192)
        h: a registered named resource (overrides cpu, gpu and memMB)
        config: a trainer TOML config file (inside the image or a mount)
        env: environment variables, e.g. NCCL_SOCKET_IFNAME=eth0,NCCL_IB_HCA=mlx5,NCCL_DEBUG=INFO
        data: HOST_PATH[:CONTAINER_PATH] bind-mounted for data (default container path /data)
        checkpoints: HOST_PATH[:CONTAINER_PATH] bind-mounted for checkpoints and runs (default /checkpoints)
        mounts: more mounts in torchx's syntax (type=bind,src=...,dst=...)
        devices: host devices passed into the container, e.g. /dev/infiniband (NCCL over RDMA)
        max_retries: scheduler retries of a failed job
        rdzv_port: port of the c10d rendezvous store on the rank-0 host
        name: job name
    """
    shape = role_shape(gpu, nproc_per_node, cpu, memMB)
    trainer_args = list(overrides)
    check_plan_shape(trainer_args, nnodes, shape["nproc_per_node"])
    args = ([f"--config={config}"] if config else []) + trainer_args + _device_args(gpu, trainer_args)
    all_mounts = list(mounts or [])
    if data:
        all_mounts += _bind(data, "/data")
    if checkpoints:
        all_mounts += _bind(checkpoints, "/checkpoints")
    for device in devices or []:
        all_mounts += _device_mount(device)
    return dist.ddp(
        *args, m=TRAIN_MODULE, image=image, name=name, h=h, cpu=shape["cpu"], gpu=gpu, memMB=shape["memMB"],
        j=f"{nnodes}x{shape['nproc_per_node']}", env={**RESTART_SAFE_ENV, **(env or {})}, max_retries=max_retries,
        rdzv_port=rdzv_port, mounts=all_mounts or None,
    )
