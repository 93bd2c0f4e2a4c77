"""Diff two plan files: tables that moved or changed sharding, and how the summary changed."""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

from torchrec.distributed.types import ParameterSharding

from dlrm_dist.planning.check import read_consistent
from dlrm_dist.planning.convert import table_shardings

HELP = "show tables that moved or changed sharding between two plans"
# The PlanSummary figures set side by side (attribute names, derived ones included).
SUMMARY_KEYS = ("estimated_iteration_ms", "cost_imbalance", "hbm_imbalance", "hbm_headroom_bytes",
                "all_to_all_bytes_per_sample", "estimated_samples_per_s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="the old plan file")
    p.add_argument("b", help="the new plan file")
    p.add_argument("--json", action="store_true")


def _where(ps: ParameterSharding) -> list[tuple[int, list[int], list[int]]]:
    if ps.sharding_spec is None:
        return [(r, [], []) for r in ps.ranks or []]
    return [(s.placement.rank(), list(s.shard_offsets), list(s.shard_sizes)) for s in ps.sharding_spec.shards]


def _size(ps: ParameterSharding) -> Optional[tuple[int, int]]:
    """(rows, dim) covered by the shards; None for a replicated table (no shard spec)."""
    if ps.sharding_spec is None or not ps.sharding_spec.shards:
        return None
    ends = [[o + n for o, n in zip(s.shard_offsets, s.shard_sizes)] for s in ps.sharding_spec.shards]
    return max(e[0] for e in ends), max(e[1] for e in ends)


def _ranks(ps: ParameterSharding) -> list[int]:
    return sorted({r for r, _, _ in _where(ps)})


def table_changes(a: dict[str, ParameterSharding], b: dict[str, ParameterSharding]) -> list[dict[str, Any]]:
    changes = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            changes.append({"table": name, "change": "only in " + ("b" if name not in a else "a")})
            continue
        x, y = a[name], b[name]
        what = []
        if _size(x) != _size(y) and None not in (_size(x), _size(y)):
            (ra, da), (rb, db) = _size(x), _size(y)
            what.append(f"resized {ra}x{da} -> {rb}x{db}")
        if (x.sharding_type, x.compute_kernel) != (y.sharding_type, y.compute_kernel):
            what.append("resharded")
        elif _ranks(x) != _ranks(y) or (not what and _where(x) != _where(y)):
            what.append("moved")
        if x.cache_params != y.cache_params:
            what.append("cache changed")
        if what:
            changes.append({"table": name, "change": " + ".join(what),
                            "a": f"{x.sharding_type}/{x.compute_kernel} ranks {sorted(set(x.ranks or []))}",
                            "b": f"{y.sharding_type}/{y.compute_kernel} ranks {sorted(set(y.ranks or []))}"})
    return changes


def run(args: argparse.Namespace) -> int:
    pa, pb = read_consistent(args.a), read_consistent(args.b)
    changes = table_changes(table_shardings(pa.plan), table_shardings(pb.plan))
    sa, sb = pa.estimates.summary, pb.estimates.summary
    summary = {k: {"a": getattr(sa, k), "b": getattr(sb, k)} for k in SUMMARY_KEYS}
    if args.json:
        print(json.dumps({"tables": changes, "summary": summary}, indent=1, sort_keys=True))
        return 0
    print(f"{len(changes)} table(s) differ between {args.a} and {args.b}")
    for c in changes:
        print(f"  {c['table']:<16} {c['change']:<30} {c.get('a', '')}  ->  {c.get('b', '')}")
    print("summary:")
    for k, v in summary.items():
        a, b = v["a"], v["b"]
        delta = f"  ({(b - a) / a * 100:+.1f}%)" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else ""
        print(f"  {k:<30} {a!s:>22} -> {b!s:<22}{delta}")
    return 0
