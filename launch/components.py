"""torchx component for dlrm_dist: ``torchx run launch/components.py:trainer ...``.

(Annotations stay real types here: torchx reads them to parse the command line.)
A thin layer over torchx's own ``dist.ddp`` component (torchrun with c10d rendezvous on the
rank-0 host, one replica per node), adding the trainer's entry point, its config file and
overrides, and mounts for data and checkpoints. No training logic lives here.
"""


from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components import dist

from dlrm_dist.distributed.env import RESTART_SAFE_ENV

TRAIN_MODULE = "dlrm_dist.train"
DEFAULT_IMAGE = "dlrm_dist:latest"


def _bind(mount: str, default_dst: str) -> List[str]:
    """``HOST_PATH[:CONTAINER_PATH]`` -> torchx's bind-mount spec."""
    src, _, dst = mount.partition(":")
    return ["type=bind", f"src={src}", f"dst={dst or default_dst}"]


def trainer(
    *overrides: str,
    nnodes: int = 1,
    nproc_per_node: int = 2,
    image: str = DEFAULT_IMAGE,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    config: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    data: Optional[str] = None,
    checkpoints: Optional[str] = None,
    mounts: Optional[List[str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    name: str = "dlrm",
) -> specs.AppDef:
    """Hybrid-parallel DLRM training with dlrm_dist on nnodes x nproc_per_node ranks.

    Args:
        overrides: trainer arguments, e.g. --steps 1000 --data criteo --data-dir /data
        nnodes: number of nodes (replicas)
        nproc_per_node: ranks per node: one per GPU, or CPU ranks
        image: container image with dlrm_dist installed (the cwd for local_cwd)
        cpu: CPUs per node
        gpu: GPUs per node (0: CPU ranks over gloo)
        memMB: memory per node in MB
        h: a registered named resource (overrides cpu, gpu and memMB)
        config: a trainer TOML config file (inside the image or a mount)
        env: environment variables, e.g. NCCL_DEBUG=INFO,LOGLEVEL=INFO
        data: HOST_PATH[:CONTAINER_PATH] bind-mounted for data (default container path /data)
        checkpoints: HOST_PATH[:CONTAINER_PATH] bind-mounted for checkpoints and runs (default /checkpoints)
        mounts: more mounts in torchx's syntax (type=bind,src=...,dst=...)
        max_retries: scheduler retries of a failed job
        rdzv_port: port of the c10d rendezvous store on the rank-0 host
        name: job name
    """
    args = ([f"--config={config}"] if config else []) + list(overrides)
    all_mounts = list(mounts or [])
    if data:
        all_mounts += _bind(data, "/data")
    if checkpoints:
        all_mounts += _bind(checkpoints, "/checkpoints")
    return dist.ddp(
        *args, m=TRAIN_MODULE, image=image, name=name, h=h, cpu=cpu, gpu=gpu, memMB=memMB,
        j=f"{nnodes}x{nproc_per_node}", env={**RESTART_SAFE_ENV, **(env or {})}, max_retries=max_retries, rdzv_port=rdzv_port,
        mounts=all_mounts or None,
    )
