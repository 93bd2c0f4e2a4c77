"""Planning: where every embedding table (or shard) lives. Needs no process group.

types.py holds every contract the stages share (inputs, options, placements, estimates),
below them all; inputs.py (the declared inputs and tables files, below types.py) ->
options.py (enumeration + TorchRec's estimates) -> partitioner.py (our proposer/partitioner)
-> estimates.py -> planfile.py (the file format); planner.py composes them. plan.py decides
a training job's plan; check.py checks a plan against a model and job; summary.py prints one.
"""

from dlrm_dist.planning.errors import NoFitError, PlanError
from dlrm_dist.planning.summary import format_plan, plan_rows

__all__ = ["NoFitError", "PlanError", "format_plan", "plan_rows"]
