"""Human-readable summary of a ShardingPlan: which table is where, by which sharding type."""

from __future__ import annotations

from typing import Any

from torchrec.distributed.types import ShardingPlan


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
