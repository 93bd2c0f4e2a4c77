"""Checks a plan against the model it will shard and the job it will run in.

Every mismatch is collected (missing or extra table, rows or dim, a shard outside the
table, shards that do not tile it, a rank beyond the world size, the device kind), so a
user sees them all at once rather than one per attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.types import ExpectedTable

if TYPE_CHECKING:  # TorchRec only where a ShardingPlan is checked: PlanMismatchError imports without it
    from torchrec.distributed.types import ShardingPlan

    from dlrm_dist.planning import planfile


class PlanMismatchError(PlanError):
    """The plan does not fit the model or the job; ``problems`` lists every mismatch."""

    def __init__(self, origin: str, problems: list[str]) -> None:
        self.problems = problems
        # One line (as every CLI error): the problems joined; ``problems`` keeps them apart.
        super().__init__(f"{origin} does not match this job: " + "; ".join(problems))


def _device_of(placement: str) -> str:
    # "rank:3/cuda:3" -> "cuda"; "rank:1/cpu" -> "cpu"
    return placement.split("/", 1)[1].split(":", 1)[0]


@dataclass(frozen=True)
class ShardFacts:
    """What the checks read of one shard, from a TorchRec ShardMetadata or a plan file's shard alike."""

    offsets: tuple[int, int]
    sizes: tuple[int, int]
    rank: int
    placement: str  # "rank:3/cuda:3"


def table_problems(name: str, ranks: Optional[list[int]], shards: Optional[list[ShardFacts]], exp: ExpectedTable,
                   world_size: int, device: str) -> list[str]:
    """Every way one table's sharding (its ranks, and its shards if it has a sharding spec) misfits."""
    problems = []
    if ranks and max(ranks) >= world_size:
        problems.append(f"table {name}: placed on rank {max(ranks)}, but the world size is {world_size}")
    if shards is None:
        return problems
    area = 0
    for s in shards:
        (r0, c0), (nr, nc) = s.offsets, s.sizes
        if r0 + nr > exp.rows or c0 + nc > exp.dim:
            problems.append(
                f"table {name}: shard at rows {r0}+{nr}, cols {c0}+{nc} lies outside the model's "
                f"{exp.rows} x {exp.dim} table (different rows or dim)"
            )
        area += nr * nc
        if s.rank >= world_size:
            problems.append(f"table {name}: shard on rank {s.rank}, but the world size is {world_size}")
        if _device_of(s.placement) != device:
            problems.append(f"table {name}: shard placed on {_device_of(s.placement)}, but this job runs on {device}")
    if area != exp.rows * exp.dim and not any("outside" in p for p in problems):
        problems.append(f"table {name}: shards cover {area} of the model's {exp.rows * exp.dim} weights "
                        f"({exp.rows} x {exp.dim}): different rows or dim")
    return problems


def plan_problems(shardings: dict[str, tuple[Optional[list[int]], Optional[list[ShardFacts]]]],
                  tables: list[ExpectedTable], world_size: int, device: str) -> list[str]:
    """Every mismatch between ``{table: (ranks, shards)}`` and the model's ``tables`` on this job."""
    expected = {t.name: t for t in tables}
    problems = [f"table {n} is in the model but missing from the plan" for n in expected if n not in shardings]
    problems += [f"table {n} is in the plan but not in the model" for n in shardings if n not in expected]
    for name, (ranks, shards) in shardings.items():
        if name in expected:
            problems += table_problems(name, ranks, shards, expected[name], world_size, device)
    return problems


def check_plan(plan: ShardingPlan, tables: list[ExpectedTable], world_size: int, device: str,
               origin: str = "the plan") -> None:
    """Raises PlanMismatchError listing every way ``plan`` does not fit."""
    from dlrm_dist.planning.convert import table_shardings

    facts = {name: (ps.ranks, None if ps.sharding_spec is None else
                    [ShardFacts(tuple(s.shard_offsets), tuple(s.shard_sizes), s.placement.rank(), str(s.placement))
                     for s in ps.sharding_spec.shards])
             for name, ps in table_shardings(plan).items()}
    problems = plan_problems(facts, tables, world_size, device)
    if problems:
        raise PlanMismatchError(origin, problems)


def read_consistent(path: str) -> "planfile.PlanFile":
    """A plan file whose plan agrees with its own inputs, or PlanMismatchError.

    A hand edit (a shard moved to a rank the topology does not have, a resized shard) breaks
    that agreement, and then the stored estimates describe another plan: refuse to show them.
    """
    from dlrm_dist.planning import planfile

    pf = planfile.read(path)
    t = pf.inputs.topology
    tables = [ExpectedTable(x.name, x.rows, x.dim) for x in pf.inputs.tables]
    check_plan(pf.plan, tables, t.world_size, t.device,
               origin=f"plan file {path} (its plan against its own inputs; edited by hand? remake it with dlrm-plan make)")
    return pf
