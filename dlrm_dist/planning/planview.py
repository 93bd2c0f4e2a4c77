"""A plan file read and checked without torch or TorchRec: what ``dlrm-plan inspect`` and
``validate`` need (its inputs, estimates, planner notes and each table's declared sharding).

``read_view`` validates the whole file (planformat.py: the same models and estimate checks
planfile.read applies); ``view_problems`` is check.py's ``check_plan`` on the declared
shardings instead of TorchRec's ParameterSharding objects: the same checks, the same words
(a test holds the two to the same output on damaged plans). Only a plan that sets a TorchRec
dataclass or enum (cache params of a UVM-cached table, ...) loads TorchRec to decode it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrm_dist.planning.check import PlanMismatchError
from dlrm_dist.planning.planformat import ShardingModel, checked_parts
from dlrm_dist.config.files import read_data
from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.types import ExpectedTable, PlanEstimates, PlannerInputs


@dataclass(frozen=True)
class PlanView:
    """A checked plan file without its TorchRec objects."""

    inputs: PlannerInputs
    estimates: PlanEstimates
    planner: dict[str, Any]
    shardings: dict[str, dict[str, ShardingModel]]  # module path -> table -> its sharding

    def table_shardings(self) -> dict[str, ShardingModel]:
        """``{table: sharding}`` over every module (as convert.table_shardings)."""
        out: dict[str, ShardingModel] = {}
        for tables in self.shardings.values():
            out.update(tables)
        return out


def read_view(path: str | Path) -> PlanView:
    parts = checked_parts(read_data(path, "plan file", PlanError), str(path))
    return PlanView(parts.inputs, parts.estimates, parts.planner, dict(parts.model.plan))


def _device_of(placement: str) -> str:
    return placement.split("/", 1)[1].split(":", 1)[0]  # "rank:3/cuda:3" -> "cuda"


def _table_problems(name: str, ps: ShardingModel, exp: ExpectedTable, world_size: int, device: str) -> list[str]:
    problems = []
    if ps.ranks and max(ps.ranks) >= world_size:
        problems.append(f"table {name}: placed on rank {max(ps.ranks)}, but the world size is {world_size}")
    if ps.shards is None:
        return problems
    area = 0
    for s in ps.shards:
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


def view_problems(view: PlanView, tables: list[ExpectedTable], world_size: int, device: str) -> list[str]:
    """Every way the plan does not fit ``tables`` on ``world_size`` x ``device`` (check.check_plan's list)."""
    shardings = view.table_shardings()
    expected = {t.name: t for t in tables}
    problems = [f"table {n} is in the model but missing from the plan" for n in expected if n not in shardings]
    problems += [f"table {n} is in the plan but not in the model" for n in shardings if n not in expected]
    for name, ps in shardings.items():
        if name in expected:
            problems += _table_problems(name, ps, expected[name], world_size, device)
    return problems


def read_consistent_view(path: str) -> PlanView:
    """check.read_consistent without TorchRec: a view whose plan agrees with its own inputs."""
    view = read_view(path)
    t = view.inputs.topology
    problems = view_problems(view, [ExpectedTable(x.name, x.rows, x.dim) for x in view.inputs.tables],
                             t.world_size, t.device)
    if problems:
        raise PlanMismatchError(f"plan file {path} (its plan against its own inputs; edited by hand? remake it "
                                "with dlrm-plan make)", problems)
    return view
