"""One plan for every rank: rank 0's, broadcast right after the process group starts.

Each rank plans before the process group exists (so bad input fails everywhere alike), but
it plans with its own host's memory: nodes that differ (another RAM size, another cgroup
limit) can choose different plans, and ranks sharding by different plans hang in their
first all-to-all or silently exchange the wrong rows. As TorchRec's ``collective_plan``
does, rank 0's plan is the job's: every rank gathers a digest of the others' own plans,
takes rank 0's, checks it against its own model, and rank 0 names the ranks that had planned
otherwise (with the memory they planned for), so the difference is seen, not hidden.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any, Optional

import torch.distributed as dist
from torch import nn

from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.planning.check import check_plan
from dlrm_dist.planning.planfile import PlanFile
from dlrm_dist.planning.summary import plan_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanView:
    """What a rank planned: a digest of its shards, and the memory it planned for."""

    rank: int
    host: str
    digest: str
    hbm_gb: float
    ddr_gb: float

    def memory(self) -> str:
        return f"{self.host}: HBM {self.hbm_gb:.1f} GB, host memory {self.ddr_gb:.1f} GB"


def plan_digest(pf: PlanFile) -> str:
    """sha256 of the plan's shards (types, kernels, ranks, offsets, sizes), independent of estimates."""
    rows = sorted(plan_rows(pf.plan), key=lambda r: r["table"])
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def view_of(pf: PlanFile, rank: int, host: Optional[str] = None) -> PlanView:
    t = pf.inputs.topology
    return PlanView(rank, host or socket.gethostname(), plan_digest(pf), t.hbm_gb, t.ddr_gb)


def disagreement(views: list[PlanView]) -> Optional[str]:
    """A sentence naming the ranks whose own plan differs from rank 0's (None if all agree)."""
    ref = views[0]
    other = [v for v in views[1:] if v.digest != ref.digest]
    if not other:
        return None
    ranks = ", ".join(str(v.rank) for v in other)
    details = "; ".join(f"rank {v.rank} on {v.memory()}" for v in other)
    return (f"rank(s) {ranks} planned differently from rank 0 (on {ref.memory()}): {details}. Every rank uses "
            "rank 0's plan; give the job a plan file (--plan) to decide it yourself")


def agree_on_plan(pf: PlanFile, env: DistEnv, model: nn.Module) -> PlanFile:
    """Rank 0's plan file on every rank (needs the process group); logs the ranks that disagreed."""
    if env.world_size == 1:
        return pf
    views: list[Any] = [None] * env.world_size
    dist.all_gather_object(views, view_of(pf, env.rank))
    box: list[Any] = [pf if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    chosen: PlanFile = box[0]
    problem = disagreement(views)
    if problem and env.is_main:
        logger.warning(problem)
    if not env.is_main:
        from dlrm_dist.planning.plan import expected_tables, find_ebc

        _, ebc = find_ebc(model)
        check_plan(chosen.plan, expected_tables(ebc), env.world_size, env.device.type,
                   origin=f"rank 0's plan (on rank {env.rank})")
    return chosen
