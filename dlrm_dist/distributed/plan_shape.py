"""A plan file named in the trainer's arguments must fit the job being launched (both launchers ask).

(It lives in the installed package: torchx executes launch/components.py as source, where
only installed packages import.)

The trainer refuses a plan made for another world size or another number of ranks per host,
but only once every rank has started (on a cluster: after the scheduler found the nodes).
The launchers ask the same question before starting anything: a plan for 8 ranks passed to
2 x 8 GPUs, or an 8-per-host plan on hosts of 4, fails here with both shapes named.
A plan path that does not exist where the launcher runs (a path inside the image) is
left to the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from dlrm_dist.errors import DlrmError

PLAN_FLAGS = ("--plan", "--sharding.plan")


class LaunchShapeError(DlrmError):
    """The plan file was made for another number of ranks or ranks per host than the launch."""


def plan_argument(trainer_args: Sequence[str]) -> Optional[str]:
    """The plan file a trainer command line names (its last ``--plan``/``--sharding.plan``), or None."""
    found = None
    args = list(trainer_args)
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in PLAN_FLAGS:
            found = value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return found


def check_plan_shape(trainer_args: Sequence[str], nnodes: int, nproc_per_node: int,
                     cwd: Optional[Path] = None) -> Optional[str]:
    """The plan path checked against ``nnodes`` x ``nproc_per_node`` (None: no plan, or not readable here)."""
    path = plan_argument(trainer_args)
    if not path:
        return None
    full = Path(cwd or ".") / path
    if not full.is_file():
        return None
    from dlrm_dist.planning import planfile  # only when a plan is named: it imports torchrec

    topology = planfile.read(full).inputs.topology
    world = nnodes * nproc_per_node
    problems = []
    if topology.world_size != world:
        problems.append(f"it was made for {topology.world_size} ranks, the launch starts {nnodes} node(s) x "
                        f"{nproc_per_node} = {world}")
    if topology.ranks_per_host != nproc_per_node:
        problems.append(f"it places {topology.ranks_per_host} ranks per host, the launch starts {nproc_per_node} per node")
    if problems:
        raise LaunchShapeError(f"plan file {path} does not fit this launch: {'; '.join(problems)}. Make one for it "
                               f"(dlrm-plan make --world-size {world} --ranks-per-host {nproc_per_node} ...) or "
                               "launch the shape the plan names")
    return path
