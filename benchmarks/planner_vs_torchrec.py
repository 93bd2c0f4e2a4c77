"""Planner speed and quality, dlrm_dist's planner beside TorchRec's default, as JSON lines.

For each instance: both planners' wall time and the estimated bottleneck (the slowest
rank's summed shard cost, TorchRec's own perf model — both plans are rated by the same
TorchRec estimators), and their ratio. TorchRec's planner is skipped where it would take
minutes (1,000 tables on 512 GPUs); the target there is our time alone (<= 10 s).

    .venv/bin/python benchmarks/planner_vs_torchrec.py [--skip-torchrec-over 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

from dlrm_dist.logs import quiet_libraries
from dlrm_dist.model.dlrm import DLRMTrain
from dlrm_dist.planning.planner import make_plan_file, plan_file_for
from dlrm_dist.planning.types import PlannerInputs, TableSpec, TopologySpec

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT / "sharding_plans" / "inputs"


def synthetic(num_tables: int, world_size: int, seed: int = 0) -> PlannerInputs:
    """A large model: log-uniform rows (100 .. 40M), dims 32/64/128, pooling 1..20."""
    rng = random.Random(seed)
    tables = tuple(
        TableSpec(f"t{i}", int(10 ** rng.uniform(2, 7.6)), rng.choice([32, 64, 128]), float(rng.choice([1, 2, 5, 10, 20])))
        for i in range(num_tables)
    )
    return PlannerInputs(tables=tables, topology=TopologySpec(world_size, 8, hbm_gb=80.0, ddr_gb=2048.0),
                         batch_size_per_rank=512, optimizer="rowwise_adagrad")


def run_case(name: str, inputs: PlannerInputs, with_torchrec: bool) -> dict:
    start = time.perf_counter()
    ours = make_plan_file(inputs, DLRMTrain.TABLES_PATH)
    ours_s = time.perf_counter() - start
    row = {"case": name, "tables": len(inputs.tables), "world_size": inputs.topology.world_size,
           "ours_seconds": round(ours_s, 3), "ours_bottleneck_ms": ours.estimates.summary.estimated_iteration_ms}
    if with_torchrec:
        from dlrm_dist.planning.torchrec_default import plan_with_torchrec

        tr = plan_with_torchrec(inputs)
        # Rate TorchRec's plan through our bridge as well: it must agree with TorchRec's own rating.
        bridged = plan_file_for(tr.plan, inputs, "torchrec_default",
                                DLRMTrain.TABLES_PATH).estimates.summary.estimated_iteration_ms
        row.update({"torchrec_seconds": round(tr.seconds, 3), "torchrec_bottleneck_ms": tr.bottleneck_ms,
                    "torchrec_bottleneck_ms_via_bridge": bridged,
                    "ratio_ours_over_torchrec": row["ours_bottleneck_ms"] / tr.bottleneck_ms})
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-torchrec-over", type=int, default=100, help="skip TorchRec's planner above this many tables")
    args = p.parse_args()
    quiet_libraries()
    logging.disable(logging.WARNING)
    cases = [(n, PlannerInputs.load(str(INPUTS / f"{n}.json"))) for n in (
        "criteo_kaggle_gpu8", "mlperf_dcnv2_criteo1tb_gpu8x80gb", "mlperf_dcnv2_criteo1tb_gpu64x80gb",
        "mlperf_dcnv2_criteo1tb_gpu8x16gb_uvm")]
    cases += [("synthetic_500_on_64", synthetic(500, 64)), ("synthetic_1000_on_512", synthetic(1000, 512))]
    for name, inputs in cases:
        print(json.dumps(run_case(name, inputs, len(inputs.tables) <= args.skip_torchrec_over)), flush=True)


if __name__ == "__main__":
    main()
