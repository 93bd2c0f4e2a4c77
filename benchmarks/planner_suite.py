"""The planner suite: dlrm_dist's planner beside TorchRec's default on seeded instances.

Instances come from benchmarks/planner_instances.py (issue 22's 300-table UVM case and
``--count`` generated ones). For each: our plan's bottleneck, plan time and fit; TorchRec's
default EmbeddingShardingPlanner (all its proposers, its partitioner and perf model) on the
same inputs; both plans rated by the same estimator (planner.plan_file_for: TorchRec's
per-shard estimates, summed per rank). TorchRec's search space is estimated by our
enumeration (torchrec_default.OurEstimatesEnumerator: equal shard for shard, checked by
tests/unit/test_planner_estimates.py) and its proposals are capped by its own
``timeout_seconds`` (its best plan so far is kept; ``torchrec_timed_out`` says TorchRec's total
time, enumeration included, reached that limit), so the suite takes minutes instead of hours.

    .venv/bin/python benchmarks/planner_suite.py [--quick] [--count 44] [--torchrec-timeout 20]
        [--out benchmarks/results/planner-suite]

Goal (issue 22): never worse than TorchRec on any instance, median ratio ours/TorchRec <= 0.9.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.planner_instances import Instance, suite  # noqa: E402
from dlrm_dist.logs import quiet_libraries  # noqa: E402
from dlrm_dist.planning.errors import PlanError  # noqa: E402
from dlrm_dist.planning.planner import make_plan_file, plan_file_for  # noqa: E402

MODULE = "sparse"
QUICK = 8  # issue 22's instance + the first 7 generated ones


def _ours(inst: Instance) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        pf = make_plan_file(inst.inputs, MODULE)
    except PlanError as e:
        return {"ours_seconds": round(time.perf_counter() - start, 3), "ours_error": str(e)[:300]}
    s = pf.estimates.summary
    return {"ours_seconds": round(time.perf_counter() - start, 3), "ours_bottleneck_ms": s.estimated_iteration_ms,
            "ours_fits": s.fits, "ours_imbalance": s.cost_imbalance}


def _torchrec(inst: Instance, timeout: Optional[int]) -> dict[str, Any]:
    from dlrm_dist.planning.torchrec_default import plan_with_torchrec

    start = time.perf_counter()
    try:
        result = plan_with_torchrec(inst.inputs, fast=True, timeout_seconds=timeout)
    except Exception as e:  # TorchRec's planner raises its PlannerError (or others) when nothing fits
        return {"torchrec_seconds": round(time.perf_counter() - start, 3), "torchrec_error": f"{type(e).__name__}: {str(e)[:300]}"}
    pf = plan_file_for(result.plan, inst.inputs, "torchrec_default", MODULE)
    s = pf.estimates.summary
    return {"torchrec_seconds": round(result.seconds, 3), "torchrec_bottleneck_ms": s.estimated_iteration_ms,
            "torchrec_own_rating_ms": result.bottleneck_ms, "torchrec_fits": s.fits,
            "torchrec_imbalance": s.cost_imbalance,
            "torchrec_timed_out": bool(timeout and result.seconds >= timeout)}


def run_instance(inst: Instance, timeout: Optional[int]) -> dict[str, Any]:
    row = {**inst.describe(), **_ours(inst), **_torchrec(inst, timeout)}
    if "ours_bottleneck_ms" in row and "torchrec_bottleneck_ms" in row:
        row["ratio_ours_over_torchrec"] = row["ours_bottleneck_ms"] / row["torchrec_bottleneck_ms"]
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [r["ratio_ours_over_torchrec"] for r in rows if "ratio_ours_over_torchrec" in r]
    return {"instances": len(rows), "compared": len(ratios),
            "median_ratio": statistics.median(ratios) if ratios else None,
            "worst_ratio": max(ratios) if ratios else None,
            "worse_than_torchrec": [r["name"] for r in rows if r.get("ratio_ours_over_torchrec", 0) > 1 + 1e-9],
            "ours_failed": [r["name"] for r in rows if "ours_error" in r],
            "torchrec_failed": [r["name"] for r in rows if "torchrec_error" in r]}


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = ["| instance | tables | ranks | HBM GB | UVM | ours ms | TorchRec ms | ours / TorchRec | ours s | TorchRec s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = f"{r['ours_bottleneck_ms']:.3f}" if "ours_bottleneck_ms" in r else "no fit"
        theirs = f"{r['torchrec_bottleneck_ms']:.3f}" if "torchrec_bottleneck_ms" in r else "failed"
        ratio = f"{r['ratio_ours_over_torchrec']:.3f}" if "ratio_ours_over_torchrec" in r else "-"
        lines.append(f"| {r['name']} | {r['tables']} | {r['world_size']} | {r['hbm_gb']:g} | {'yes' if r['uvm'] else 'no'} "
                     f"| {ours} | {theirs} | {ratio} | {r['ours_seconds']} | {r.get('torchrec_seconds', '-')} |")
    lines.append("")
    lines.append(f"summary: {json.dumps(summary)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"only the first {QUICK} instances")
    p.add_argument("--count", type=int, default=44, help="generated instances (besides issue 22's)")
    p.add_argument("--torchrec-timeout", type=int, default=20, help="TorchRec's proposal time limit per instance (s)")
    p.add_argument("--only", help="comma-separated instance names")
    p.add_argument("--out", help="write OUT.json and OUT.md")
    args = p.parse_args()
    quiet_libraries()
    logging.disable(logging.WARNING)
    instances = suite(args.count)[: QUICK if args.quick else None]
    if args.only:
        instances = [i for i in instances if i.name in args.only.split(",")]
    rows = []
    for inst in instances:
        row = run_instance(inst, args.torchrec_timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = summarize(rows)
    print(json.dumps(summary), flush=True)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")
        Path(args.out + ".md").write_text(markdown(rows, summary))


if __name__ == "__main__":
    main()
