"""Planning: where every embedding table (or shard) lives. Needs no process group."""

from dlrm_dist.planning.plan import PlanError, make_plan
from dlrm_dist.planning.summary import plan_rows, format_plan

__all__ = ["PlanError", "format_plan", "make_plan", "plan_rows"]
