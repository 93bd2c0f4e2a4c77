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

from dlrm_dist.planning.check import PlanMismatchError, ShardFacts, plan_problems
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


def view_problems(view: PlanView, tables: list[ExpectedTable], world_size: int, device: str) -> list[str]:
    """Every way the plan does not fit ``tables`` on ``world_size`` x ``device`` (check.check_plan's list)."""
    facts = {name: (ps.ranks, None if ps.shards is None else
                    [ShardFacts(tuple(s.offsets), tuple(s.sizes), s.rank, s.placement) for s in ps.shards])
             for name, ps in view.table_shardings().items()}
    return plan_problems(facts, tables, world_size, device)


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
