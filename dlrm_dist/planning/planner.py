"""The planner's front door: inputs in, a PlanFile out; and estimates for any plan.

Composition (TorchRec's stage names): enumeration + estimation (options.py, TorchRec's
estimators), proposal + partitioning (partitioner.py), storage budgets (types.Capacity,
from the inputs' shares), and the estimates/stats (estimates.py). A plan is keyed to the
module path its caller gives (the model's to say: DLRMTrain.TABLES_PATH for the trainer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlrm_dist.planning.baselines import baseline
from dlrm_dist.planning.convert import from_sharding_plan, plan_entries
from dlrm_dist.planning.estimates import estimate
from dlrm_dist.planning.inputs import MANAGED_KERNEL, MANAGED_SHARDING_TYPE
from dlrm_dist.planning.options import Enumerator
from dlrm_dist.planning.partitioner import partition
from dlrm_dist.planning.planfile import PlanFile
from dlrm_dist.planning.storage import MANAGED_ROW_BYTES, MANAGED_SHARD_BYTES
from dlrm_dist.planning.types import PlannerInputs, TablePlacement

if TYPE_CHECKING:  # planning imports no TorchRec: a plan becomes a ShardingPlan when read (planfile.PlanFile)
    from torchrec.distributed.types import ShardingPlan


def notes_for(inputs: PlannerInputs) -> list[str]:
    """What a user should know about how these inputs were interpreted."""
    notes = []
    if inputs.topology.device == "cpu":
        asked = [t.name for t in inputs.tables if t.compute_kernels and set(t.compute_kernels) - {"fused", "dense"}]
        notes.append(
            "cpu topology: fbgemm has no UVM or UVM-caching kernels on CPU (its CPU build turns them into "
            "plain host-memory tables), so every table is planned in host memory (DDR) with the fused or "
            "dense kernel and no cache budget is used"
            + (f"; UVM kernels requested for {asked} were not offered" if asked else "")
        )
    managed = [t.name for t in inputs.tables if t.managed]
    if managed:
        notes.append(
            f"managed tables {managed}: planned {MANAGED_SHARDING_TYPE} with the {MANAGED_KERNEL} kernel only "
            f"(TorchRec shards a managed-collision remapper row-wise); each shard's memory counts its remapper: "
            f"{MANAGED_ROW_BYTES} bytes per row + {MANAGED_SHARD_BYTES:,} per shard"
        )
    return notes


def _package(inputs: PlannerInputs, placed: list[TablePlacement], name: str, module_path: str) -> PlanFile:
    names = [t.name for t in inputs.tables]
    t = inputs.topology
    plan = plan_entries(placed, names, t.device, t.ranks_per_host, module_path)
    return PlanFile(inputs, plan, estimate(placed, inputs), {"name": name, "notes": notes_for(inputs)})


def make_plan_file(inputs: PlannerInputs, module_path: str) -> PlanFile:
    """Plans ``inputs`` with dlrm_dist's planner, keyed to the tables' ``module_path`` in the model."""
    enumerator = Enumerator(inputs)
    placed = partition(enumerator.all_options(), inputs)
    return _package(inputs, placed, "dlrm_dist", module_path)


def baseline_plan_file(name: str, inputs: PlannerInputs, module_path: str) -> PlanFile:
    """A simple baseline (baselines.py) on the same inputs, estimated alike."""
    return _package(inputs, baseline(name, Enumerator(inputs)), name, module_path)


def plan_file_for(plan: ShardingPlan, inputs: PlannerInputs, name: str, module_path: str) -> PlanFile:
    """Any planner's ShardingPlan, estimated with the same models as ours."""
    placed = from_sharding_plan(plan, Enumerator(inputs))
    return _package(inputs, placed, name, module_path)
