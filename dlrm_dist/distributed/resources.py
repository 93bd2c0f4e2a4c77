"""The memory this process may plan with: device memory, and host memory as the container sees it.

``SC_PHYS_PAGES`` is the node's RAM, not what a container may use: a job under torchx
``--memMB``, a Kubernetes limit or a Slurm ``--mem`` lives in a memory cgroup whose limit can
be far smaller. Planning with the node's RAM places UVM tables in memory the job cannot have
(the kernel OOM-kills a rank mid-run). ``host_memory_bytes`` is the smaller of the two,
walking the process's cgroup and its ancestors (cgroup v2 ``memory.max``, v1
``memory.limit_in_bytes``).

``dense_reservation_bytes`` is the device memory the embeddings must leave to the dense part
and the input batches, sized as TorchRec's ``HeuristicalStorageReservation`` sizes it: the
dense parameters x 6 (weights, gradients, optimizer state, DDP buckets) and the sparse
input x 20 (ids and offsets in flight, the pipeline's copies), on every device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
UNLIMITED_V1 = 1 << 60  # cgroup v1 writes ~2^63 rounded to the page size for "no limit"
# TorchRec's HeuristicalStorageReservation multipliers (storage_reservations.py).
DENSE_MULTIPLIER = 6
KJT_MULTIPLIER = 20


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _limit(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < UNLIMITED_V1 else None


def _candidates(root: Path, proc_cgroup: Path) -> Iterable[Path]:
    """The limit files of this process's memory cgroup and of every ancestor (v2 and v1)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            base, name = root, "memory.max"  # v2: one unified hierarchy
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.strip("/").split("/") if p]
        for depth in range(len(parts), -1, -1):
            yield base.joinpath(*parts[:depth]) / name
    # A container usually sees its own cgroup as the root of the mount.
    yield root / "memory.max"
    yield root / "memory" / "memory.limit_in_bytes"


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Optional[int]:
    """The tightest memory limit of this process's cgroups, in bytes (None: unlimited)."""
    limits = [v for v in (_limit(p) for p in _candidates(root, proc_cgroup)) if v is not None]
    return min(limits) if limits else None


def host_memory_bytes(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Host memory this process may use: the node's RAM or its cgroup limit, whichever is smaller."""
    ram = physical_memory_bytes()
    limit = cgroup_memory_limit(root, proc_cgroup)
    return min(ram, limit) if limit else ram


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of a CUDA device (0 for the CPU)."""
    if device.type != "cuda":
        return 0
    return int(torch.cuda.get_device_properties(device).total_memory)


def dense_reservation_bytes(model: nn.Module, shardable: Iterable[nn.Module], batch_size_per_rank: int,
                            pooling_factors: Iterable[float]) -> int:
    """Device memory kept for everything but the sharded tables (TorchRec's heuristic, see above)."""
    skip = {id(p) for m in shardable for p in m.parameters()}
    dense = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)
    dense += sum(b.numel() * b.element_size() for b in model.buffers())
    ids = sum(batch_size_per_rank * pf for pf in pooling_factors)
    return int(DENSE_MULTIPLIER * dense + KJT_MULTIPLIER * ids * 8)  # int64 ids
