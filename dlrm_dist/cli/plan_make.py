"""Make a plan file from tables, topology and budgets (a full inputs file and/or flags)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from dlrm_dist.cli.render import summary_text
from dlrm_dist.model.dlrm import DLRMTrain
from dlrm_dist.planning import planfile
from dlrm_dist.planning.inputs import PlanInputError
from dlrm_dist.planning.planner import make_plan_file
from dlrm_dist.planning.types import PlannerInputs, TableSpec

HELP = "plan tables onto a topology and write a plan file"
_TOPOLOGY_FLAGS = {"world_size": int, "ranks_per_host": int, "device": str, "hbm_gb": float, "ddr_gb": float,
                   "hbm_bw_gbps": float, "ddr_bw_gbps": float, "intra_host_bw_gbps": float, "inter_host_bw_gbps": float}
_BUDGET_FLAGS = {"hbm_share": float, "ddr_share": float, "cache_load_factor": float}


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by every subcommand that builds planner inputs."""
    p.add_argument("--inputs", help="a full inputs file (JSON/TOML): tables, topology, budgets, ...")
    p.add_argument("--tables", help="a tables file (JSON/TOML) with a 'tables' list; overrides --inputs' tables")
    for name, typ in {**_TOPOLOGY_FLAGS, **_BUDGET_FLAGS}.items():
        p.add_argument("--" + name.replace("_", "-"), type=typ, dest=name)
    p.add_argument("--batch-size-per-rank", type=int, dest="batch_size_per_rank")
    p.add_argument("--optimizer", help="embedding optimizer (its state counts toward memory)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_arguments(p)
    p.add_argument("-o", "--out", required=True, help="the plan file to write")
    p.add_argument("--module-path", default=DLRMTrain.TABLES_PATH,
                   help=f"module path of the EmbeddingBagCollection (default: the trainer's, {DLRMTrain.TABLES_PATH})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def inputs_from_args(args: argparse.Namespace) -> PlannerInputs:
    """Inputs file first, then tables file, then individual flags; all checked as one inputs file."""
    base: dict[str, Any] = PlannerInputs.load(args.inputs).to_dict() if args.inputs else {"topology": {}, "budgets": {}}
    if args.tables:
        base["tables"] = [t.to_dict() for t in TableSpec.load_all(args.tables)]
    elif not args.inputs:
        raise PlanInputError("give --tables FILE (or --inputs FILE)")
    topo = {**base["topology"], **{k: getattr(args, k) for k in _TOPOLOGY_FLAGS if getattr(args, k) is not None}}
    if "world_size" not in topo:
        raise PlanInputError("give --world-size (or a topology in --inputs)")
    topo.setdefault("ranks_per_host", min(8, topo["world_size"]))
    budgets = {**base.get("budgets", {}), **{k: getattr(args, k) for k in _BUDGET_FLAGS if getattr(args, k) is not None}}
    rest = {k: v for k in ("batch_size_per_rank", "optimizer")
            if (v := getattr(args, k) if getattr(args, k) is not None else base.get(k)) is not None}
    origin = " + ".join([f for f in (args.inputs, args.tables) if f] + ["flags"])
    return PlannerInputs.from_dict({"tables": base["tables"], "topology": topo, "budgets": budgets, **rest}, origin)


def run(args: argparse.Namespace) -> int:
    inputs = inputs_from_args(args)
    start = time.perf_counter()
    pf = make_plan_file(inputs, module_path=args.module_path)
    seconds = time.perf_counter() - start
    planfile.write(pf, args.out)
    if args.json:
        print(json.dumps({"plan": args.out, "seconds": seconds, **pf.estimates.summary.describe()}, indent=1, sort_keys=True))
    else:
        print(f"wrote {args.out}: {len(inputs.tables)} tables on {inputs.topology.world_size} "
              f"{inputs.topology.device} rank(s) in {seconds:.2f} s")
        for note in pf.planner.get("notes", []):
            print(f"note: {note}")
        print(summary_text(pf.estimates.summary))
    return 0


