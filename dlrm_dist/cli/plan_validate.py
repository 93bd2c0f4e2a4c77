"""Validate a plan file against a model's tables and a job's world size and device.

Reads the plan without torch or TorchRec (planning/planview.py), so it starts in about a second.
"""

from __future__ import annotations

import argparse

from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.planview import read_view, view_problems
from dlrm_dist.planning.types import ExpectedTable, TableSpec

HELP = "check a plan against tables and a world size (exit 1 listing every mismatch)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", help="a plan file")
    p.add_argument("--tables", required=True, help="the model's tables file (name, rows, dim)")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--device", choices=("cuda", "cpu"), help="the job's device (default: the plan's)")


def run(args: argparse.Namespace) -> int:
    if args.world_size < 1:
        raise PlanError(f"--world-size={args.world_size} must be >= 1")
    pf = read_view(args.plan)
    tables = [ExpectedTable(t.name, t.rows, t.dim) for t in TableSpec.load_all(args.tables)]
    device = args.device or pf.inputs.topology.device
    problems = view_problems(pf, tables, args.world_size, device)
    if problems:  # a report, not an error: one line per mismatch
        print(f"{args.plan} does not match {args.tables} on {args.world_size} x {device}:")
        print("\n".join(f"  - {p}" for p in problems))
        return 1
    print(f"{args.plan}: OK for {len(tables)} tables on {args.world_size} x {device}")
    return 0
