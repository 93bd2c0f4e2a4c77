"""Embedding-initialisation throughput (elements/s) of dlrm_dist.model.init, by thread count.

    python -m benchmarks.init_throughput [--rows 2000000] [--dim 128] [--workers 1,2,4] [--device cpu]

Fills one shard of a 40M-row table (rows from the middle, so the Philox jump is exercised)
and prints one JSON line per thread count, plus the time the heaviest rank of the committed
8 x 80 GB MLPerf plan would spend at that rate. Values are checked identical across counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from dlrm_dist.model.init import ShardFill, fill_shards
from dlrm_dist.planning import planfile

PLAN = Path(__file__).resolve().parents[1] / "sharding_plans" / "mlperf_dcnv2_criteo1tb_gpu8x80gb.json"


def heaviest_rank_elements(plan_path: Path = PLAN) -> int:
    """Embedding elements held by the most loaded rank of a plan file."""
    per_rank: dict[int, int] = {}
    for module_plan in planfile.read(plan_path).plan.plan.values():
        for ps in module_plan.values():
            for s in ps.sharding_spec.shards if ps.sharding_spec else ():
                per_rank[s.placement.rank()] = per_rank.get(s.placement.rank(), 0) + s.shard_sizes[0] * s.shard_sizes[1]
    return max(per_rank.values())


def measure(rows: int, dim: int, workers: int, device: str) -> tuple[float, torch.Tensor]:
    out = torch.empty(rows, dim, device=device)
    start = time.perf_counter()
    fill_shards([ShardFill(out, 3, 40_000_000, dim, 10_000_000, 0)], seed=0, workers=workers)
    if device == "cuda":
        torch.cuda.synchronize()
    return rows * dim / (time.perf_counter() - start), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--workers", default=",".join(str(w) for w in sorted({1, 2, len(os.sched_getaffinity(0))})))
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    heaviest = heaviest_rank_elements()
    reference = None
    for workers in [int(w) for w in args.workers.split(",")]:
        rate, out = measure(args.rows, args.dim, workers, args.device)
        same = True if reference is None else bool(torch.equal(out.cpu(), reference))
        reference = out.cpu() if reference is None else reference
        print(json.dumps({"workers": workers, "device": args.device, "elements_per_s": round(rate),
                          "identical_to_first": same, "mlperf_8x80gb_heaviest_rank_elements": heaviest,
                          "mlperf_8x80gb_heaviest_rank_s": round(heaviest / rate, 1),
                          "cpus": len(os.sched_getaffinity(0)), "machine": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
