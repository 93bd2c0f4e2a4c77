"""Measure this machine for the planner: embedding kernels, collectives, GEMMs, a sharded step.

    dlrm-plan calibrate --out machine.json [--backend gloo] [--world-size N] [--quick]
    dlrm-plan make --tables t.json --calibration machine.json --topology this-machine -o plan.json

The ranks are spawned here (one process per rank, gloo, each with its share of the cores) and
stopped after --timeout seconds. Measure with the world size the jobs will use: ranks sharing
cores slow each other's kernels, and the collectives' cost depends on the world size.
"""

from __future__ import annotations

import argparse
import json
import time

from dlrm_dist.planning.calibration import CalibrationError, describe, write

HELP = "measure this machine's kernels, collectives and GEMMs into a calibration file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="the calibration file to write (JSON)")
    p.add_argument("--backend", default="gloo", help="collective backend (this machine: gloo)")
    p.add_argument("--world-size", type=int, default=2, help="ranks to measure with (default 2)")
    p.add_argument("--optimizer", default="rowwise_adagrad", help="the embedding optimizer the jobs use")
    p.add_argument("--quick", action="store_true", help="a small grid (seconds; for trying the tools)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before the ranks are stopped")
    p.add_argument("--json", action="store_true", help="print the calibration's figures as JSON")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.world_size <= 64:
        raise CalibrationError(f"--world-size={args.world_size}: calibrate with 1..64 ranks on one machine")
    if args.timeout <= 0:
        raise CalibrationError(f"--timeout={args.timeout}: must be > 0 seconds")
    import dataclasses

    from dlrm_dist.planning import measure  # torch, fbgemm, TorchRec: only when measuring

    sizes = dataclasses.replace(measure.TINY if args.quick else measure.Sizes(), optimizer=args.optimizer)
    measure.fbgemm_optimizer(args.optimizer)  # an unknown optimizer is refused before any rank starts
    start = time.perf_counter()
    cal = measure.calibrate(args.world_size, args.backend, sizes, timeout_s=args.timeout)
    write(cal, args.out)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"calibration": args.out, "seconds": seconds, **cal.to_data()}, indent=1, sort_keys=True))
    else:
        print(f"wrote {args.out} in {seconds:.1f} s: {len(cal.embedding)} kernel settings")
        print(describe(cal))
    return 0
