"""Set a plan beside simple baselines (and optionally TorchRec's planner) on the same inputs."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from dlrm_dist.cli.plan_make import add_input_arguments, inputs_from_args
from dlrm_dist.cli.render import gb
from dlrm_dist.model.dlrm import DLRMTrain
from dlrm_dist.planning.check import read_consistent
from dlrm_dist.planning.baselines import BASELINES
from dlrm_dist.planning.planfile import PlanFile
from dlrm_dist.planning.planner import baseline_plan_file, make_plan_file, plan_file_for

HELP = "compare a plan with round-robin and greedy-by-size baselines (and TorchRec's planner)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", nargs="?", help="a plan file (its inputs are reused); or give inputs flags")
    add_input_arguments(p)
    p.add_argument("--torchrec", action="store_true", help="also run TorchRec's default planner (can be slow)")
    p.add_argument("--json", action="store_true")


def _row(name: str, pf: PlanFile, seconds: float | None) -> dict[str, Any]:
    s = pf.estimates.summary
    return {"planner": name, "bottleneck_ms": s.estimated_iteration_ms, "cost_imbalance": s.cost_imbalance,
            "max_hbm_bytes": s.max_hbm_bytes, "max_ddr_bytes": s.max_ddr_bytes, "fits": s.fits,
            "estimated_samples_per_s": s.estimated_samples_per_s, "seconds": seconds}


def compare(pf: PlanFile, with_torchrec: bool) -> list[dict[str, Any]]:
    rows = [_row(pf.planner.get("name", "plan"), pf, None)]
    path = next(iter(pf.plan.plan))  # every plan compared is keyed like the given one
    for name in BASELINES:
        rows.append(_row(name, baseline_plan_file(name, pf.inputs, path), None))
    if with_torchrec:
        from dlrm_dist.planning.torchrec_default import plan_with_torchrec

        result = plan_with_torchrec(pf.inputs)
        rows.append(_row("torchrec_default", plan_file_for(result.plan, pf.inputs, "torchrec_default", path), result.seconds))
    best = rows[0]["bottleneck_ms"]
    for r in rows:
        r["vs_plan"] = r["bottleneck_ms"] / best if best else None
    return rows


def run(args: argparse.Namespace) -> int:
    if args.plan:
        pf, seconds = read_consistent(args.plan), None
    else:
        start = time.perf_counter()
        pf = make_plan_file(inputs_from_args(args), DLRMTrain.TABLES_PATH)
        seconds = time.perf_counter() - start
    rows = compare(pf, args.torchrec)
    rows[0]["seconds"] = seconds
    if args.json:
        print(json.dumps(rows, indent=1, sort_keys=True))
        return 0
    print(f"{'planner':<18} {'bottleneck ms':>14} {'x plan':>7} {'imbalance':>10} {'max HBM':>9} {'max DDR':>9} {'fits':>5} {'samples/s':>14}")
    for r in rows:
        sps = f"{r['estimated_samples_per_s']:,.0f}" if r["estimated_samples_per_s"] else "-"
        print(f"{r['planner']:<18} {r['bottleneck_ms']:>14.4f} {r['vs_plan']:>7.2f} {r['cost_imbalance']:>10.3f} "
              f"{gb(r['max_hbm_bytes']):>9} {gb(r['max_ddr_bytes']):>9} {'yes' if r['fits'] else 'NO':>5} {sps:>14}")
    return 0
