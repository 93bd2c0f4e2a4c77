"""Make a plan file from tables, topology and budgets (a full inputs file and/or flags).

The topology comes from --inputs, then flags; ``--topology this-machine`` fills what is not
given from this machine (cpu, its host memory, one host). Whatever is still unset takes the
inputs format's defaults, and the plan records which fields those were, so that every summary
of it says so at the top (a 512 GB host assumed on a 23 GB machine is not silent).
``--calibration F`` (``dlrm-plan calibrate``) replaces TorchRec's constant costs with this
machine's measured ones; ``--dense-flops-per-sample`` / ``--dense-parameters`` add the job's
dense part to a calibrated plan's predicted step.

Planning imports neither TorchRec nor torch (their import took longer than planning 1,000 tables):
TorchRec's estimators are computed in closed form (planning/shard_perf.py, shard_storage.py) and
the plan file is written from our placements (convert.plan_entries). Only ``--calibration`` loads
TorchRec, for its calibrated estimator.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from dlrm_dist.cli.render import summary_text
from dlrm_dist.planning import calibration, planfile
from dlrm_dist.planning.inputs import PlanInputError, TopologyModel, read_inputs_file
from dlrm_dist.planning.summary import topology_lines
from dlrm_dist.planning.types import PlannerInputs, TableSpec

TABLES_PATH = "model.sparse_arch"  # DLRMTrain.TABLES_PATH (a test keeps them equal; no model import here)
THIS_MACHINE = "this-machine"

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
    p.add_argument("--topology", choices=(THIS_MACHINE,),
                   help="this-machine: cpu ranks on this one host with its memory (flags still win)")
    p.add_argument("--calibration", metavar="FILE",
                   help="a calibration file (dlrm-plan calibrate): measured costs instead of TorchRec's constants")
    p.add_argument("--dense-flops-per-sample", type=float, dest="dense_flops_per_sample",
                   help="the dense part's forward FLOPs per sample (with --calibration: added to the predicted step)")
    p.add_argument("--dense-parameters", type=int, dest="dense_parameters",
                   help="the dense part's parameters (all-reduced every step)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_arguments(p)
    p.add_argument("-o", "--out", required=True, help="the plan file to write")
    p.add_argument("--module-path", default=TABLES_PATH,
                   help=f"module path of the EmbeddingBagCollection (default: the trainer's, {TABLES_PATH})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def this_machine(world_size: int) -> dict[str, Any]:
    """Topology fields of this machine: cpu ranks on one host, its (cgroup-limited) memory."""
    from dlrm_dist.planning.inputs import MAX_MEMORY_GB

    return {"device": "cpu", "ranks_per_host": world_size, "hbm_gb": 0.0,
            "ddr_gb": min(host_memory_bytes() / 1024**3, MAX_MEMORY_GB)}


def host_memory_bytes() -> int:
    """Physical memory, or the cgroup's limit when lower (resources.py's rule, without torch)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _dense(args: argparse.Namespace, base: dict[str, Any]) -> Any:
    given = {k: v for k, v in (("flops_per_sample", args.dense_flops_per_sample),
                               ("parameters", args.dense_parameters)) if v is not None}
    if not given:
        return base.get("dense")
    return {**(base.get("dense") or {"flops_per_sample": 0.0, "parameters": 0}), **given}


def inputs_from_args(args: argparse.Namespace) -> PlannerInputs:
    """Inputs file first, then tables file, then individual flags; all checked as one inputs file."""
    return inputs_and_assumed(args)[0]


def inputs_and_assumed(args: argparse.Namespace) -> tuple[PlannerInputs, list[str]]:
    """The inputs, and the topology fields nobody gave (the format's defaults were assumed)."""
    base: dict[str, Any] = {"topology": {}, "budgets": {}}
    given_topology: set[str] = set()
    if args.inputs:
        model = read_inputs_file(args.inputs)
        base, given_topology = PlannerInputs.of(model).to_dict(), set(model.topology.model_fields_set)
        # Only what the file gave: what it left out takes this machine's values or the defaults below.
        base["topology"] = {k: v for k, v in base["topology"].items() if k in given_topology}
    if args.tables:
        base["tables"] = [t.to_dict() for t in TableSpec.load_all(args.tables)]
    elif not args.inputs:
        raise PlanInputError("give --tables FILE (or --inputs FILE)")
    flags = {k: getattr(args, k) for k in _TOPOLOGY_FLAGS if getattr(args, k) is not None}
    cal = calibration.read(args.calibration).to_data() if getattr(args, "calibration", None) else base.get("calibration")
    topo = {**base["topology"], **flags}
    if cal is not None and "world_size" not in topo:
        topo["world_size"] = cal["world_size"]  # the world size the calibration was measured with
    if "world_size" not in topo:
        raise PlanInputError("give --world-size (or a topology in --inputs)")
    if getattr(args, "topology", None) == THIS_MACHINE:
        topo = {**this_machine(topo["world_size"]), **topo}
        given_topology |= set(this_machine(1))
    elif cal is not None:
        topo.setdefault("device", cal["device"])
    topo.setdefault("ranks_per_host", min(8, topo["world_size"]))
    given_topology |= set(flags) | {"world_size"}
    budgets = {**base.get("budgets", {}), **{k: getattr(args, k) for k in _BUDGET_FLAGS if getattr(args, k) is not None}}
    rest = {k: v for k in ("batch_size_per_rank", "optimizer")
            if (v := getattr(args, k) if getattr(args, k) is not None else base.get(k)) is not None}
    extra = {k: v for k, v in (("calibration", cal), ("dense", _dense(args, base))) if v is not None}
    files = (args.inputs, args.tables, getattr(args, "calibration", None))
    origin = " + ".join([f for f in files if f] + ["flags"])
    inputs = PlannerInputs.from_dict({"tables": base["tables"], "topology": topo, "budgets": budgets, **rest, **extra},
                                     origin)
    return inputs, assumed_fields(inputs, given_topology)


def assumed_fields(inputs: PlannerInputs, given: set[str]) -> list[str]:
    """The memory fields of the topology that took the format's defaults (bandwidths: see the notes)."""
    wanted = ("ranks_per_host", "ddr_gb") + (("hbm_gb",) if inputs.topology.device == "cuda" else ())
    return [k for k in wanted if k not in given and k in TopologyModel.model_fields]


def run(args: argparse.Namespace) -> int:
    from dlrm_dist.planning.planner import make_plan_file  # imports no TorchRec or torch (uncalibrated)

    inputs, assumed = inputs_and_assumed(args)
    start = time.perf_counter()
    pf = make_plan_file(inputs, module_path=args.module_path)
    seconds = time.perf_counter() - start
    if assumed:
        pf.planner["assumed"] = assumed
    planfile.write(pf, args.out)
    if args.json:
        print(json.dumps({"plan": args.out, "seconds": seconds, **pf.estimates.summary.describe()}, indent=1, sort_keys=True))
    else:
        print("\n".join(topology_lines(inputs, pf.planner.get("assumed", []))))
        print(f"wrote {args.out}: {len(inputs.tables)} tables on {inputs.topology.world_size} "
              f"{inputs.topology.device} rank(s) in {seconds:.2f} s")
        for note in pf.planner.get("notes", []):
            print(f"note: {note}")
        print(summary_text(pf.estimates.summary))
    return 0


