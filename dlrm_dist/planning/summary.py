"""Human-readable summary of a plan: the topology it assumed, which table is where, by which type.

Imports no torch or TorchRec (a ShardingPlan is only read through its attributes), so the
plan inspector prints a summary without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from torchrec.distributed.types import ShardingPlan

    from dlrm_dist.planning.types import PlannerInputs

_GB = 1024**3


def topology_lines(inputs: "PlannerInputs", assumed: Sequence[str] = ()) -> list[str]:
    """The topology a plan is for, first in every summary: what was assumed, and whose costs."""
    t = inputs.topology
    memory = f"DDR {t.ddr_gb:,.2f} GB per host" + (f", HBM {t.hbm_gb:,.2f} GB per device" if t.device == "cuda" else "")
    lines = [f"topology: {t.world_size} {t.device} rank(s), {t.ranks_per_host} per host "
             f"({t.world_size // t.ranks_per_host} host(s)); {memory}"]
    if assumed:
        lines.append(f"topology: ASSUMED (not given, the inputs format's defaults): {', '.join(assumed)}; "
                     "give them as flags or use --topology this-machine")
    if inputs.calibration is not None:
        from dlrm_dist.planning.calibration import describe

        lines.append(f"costs: measured, {describe(inputs.calibration)}")
    else:
        bws = [k for k in ("hbm_bw_gbps", "ddr_bw_gbps", "intra_host_bw_gbps", "inter_host_bw_gbps") if getattr(t, k)]
        given = f" except {', '.join(bws)} (given)" if bws else ""
        lines.append(f"costs: TorchRec's constant bandwidths{given} (not this machine's: see dlrm-plan calibrate)")
    return lines


def plan_rows(plan: ShardingPlan) -> list[dict[str, Any]]:
    """One row per table: sharding type, kernel, ranks and shard shapes."""
    rows = []
    for path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():
            shards = []
            if ps.sharding_spec is not None:
                for s in ps.sharding_spec.shards:
                    shards.append({"rank": s.placement.rank(), "offsets": list(s.shard_offsets), "sizes": list(s.shard_sizes)})
            rows.append({
                "module": path,
                "table": table,
                "sharding_type": ps.sharding_type,
                "compute_kernel": ps.compute_kernel,
                "ranks": list(ps.ranks or []),
                "shards": shards,
            })
    return rows


def format_plan(plan: ShardingPlan, max_rows: int = 40) -> str:
    """A fixed-width table, plus a per-sharding-type count."""
    rows = plan_rows(plan)
    lines = [f"{'table':<14} {'sharding':<18} {'kernel':<7} {'ranks':<12} shards (rows x cols @ rank)"]
    for r in rows[:max_rows]:
        shards = ", ".join(f"{s['sizes'][0]}x{s['sizes'][1]}@{s['rank']}" for s in r["shards"]) or "replicated"
        ranks = ",".join(map(str, r["ranks"]))
        lines.append(f"{r['table']:<14} {r['sharding_type']:<18} {r['compute_kernel']:<7} {ranks:<12} {shards}")
    if len(rows) > max_rows:
        lines.append(f"... and {len(rows) - max_rows} more tables")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["sharding_type"]] = counts.get(r["sharding_type"], 0) + 1
    lines.append("by sharding type: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
