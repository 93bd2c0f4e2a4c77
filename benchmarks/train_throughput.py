"""Trainer throughput under torchrun: samples/s and per-rank step time, as JSON lines.

Kaggle-shaped DLRM (26 tables x 100k rows, dim 16, bottom 13-512-256-64-16, top
512-256-1, one id per table per sample, batch 2048), as in shared/FACTS.md's reference
figures. Each configuration is a separate torchrun job; the summary.json it writes is the
measurement.

    .venv/bin/python benchmarks/train_throughput.py [--steps 100] [--nproc 1 2] [--sharding table_wise row_wise]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = ["--data.schema=demo:table_sizes=" + "/".join(["100000"] * 26), "--train.eval_interval=0",
          "--synthetic.eval_batches=1", "--train.progress=false", "--synthetic.zipf_alpha=0"]


def run_one(nproc: int, sharding: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "dlrm_dist.train", *KAGGLE, f"--train.steps={steps}", f"--run-dir={run_dir}"]
        if sharding != "planner":
            cmd.append(f"--sharding-type={sharding}")
        threads = max(1, (os.cpu_count() or 1) // nproc)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            return {"nproc": nproc, "sharding": sharding, "error": proc.stderr[-2000:]}
        s = json.loads(Path(run_dir, "summary.json").read_text())
    return {
        "nproc": nproc, "threads_per_rank": threads, "sharding": sharding, "steps": steps,
        "global_batch_size": s["global_batch_size"], "samples_per_s": round(s["samples_per_s"], 1),
        "step_ms_per_rank": [round(t, 2) for t in s["rank_step_ms"]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sharding", nargs="+", default=["planner", "table_wise", "row_wise"])
    args = p.parse_args()
    for nproc in args.nproc:
        for sharding in args.sharding:
            print(json.dumps(run_one(nproc, sharding, args.steps)), flush=True)


if __name__ == "__main__":
    main()
