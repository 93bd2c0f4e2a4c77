"""Criteo loader speed against the trainer's step rate, as JSON lines.

Preprocesses --rows generated Criteo rows (the built-in schema, 7 pseudo-days, 26 features
hashed to 100k) into a columnar directory, then measures batches/s of one rank's loader (2 ranks, global batch 2048), one-hot
and with MLPerf DLRM-DCNv2 multi-hot sizes, and the training step rate of a short 2-rank
run on the same data. The loader must be at least 10x the step rate.

    .venv/bin/python benchmarks/loader_throughput.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or as -m benchmarks.X
from benchmarks.preprocess_vs_torchrec import make_input  # noqa: E402
from dlrm_dist.data.columnar.dataset import ColumnarDataset
from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.features.builtin import criteo_schema

ROOT = Path(__file__).resolve().parents[1]
MLPERF_HOT = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]


def loader_rate(directory: Path, multi_hot, batches: int = 300) -> float:
    ds = ColumnarDataset(directory, multi_hot=multi_hot)
    it = ds.batches("train", 2048, 0, 2, num_batches=batches + 10)
    for _ in range(10):
        next(it)
    start = time.perf_counter()
    for _ in it:
        pass
    return batches / (time.perf_counter() - start)


def step_rate(directory: Path) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "dlrm_dist.train", "--data", "columnar", "--data-dir", str(directory), "--train.steps=60",
               "--train.eval_interval=0", "--train.progress=false", f"--run-dir={run_dir}"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        ms = json.loads(Path(run_dir, "summary.json").read_text())["rank_step_ms"]
    return 1000.0 / max(ms)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "train.txt", Path(tmp) / "criteo"
        make_input(src, args.rows)
        preprocess(Options(criteo_schema(days=7, buckets=100_000), [src], out, progress=False))
        steps = step_rate(out)
        for name, hot in (("one_hot", None), ("mlperf_multi_hot", MLPERF_HOT)):
            rate = loader_rate(out, hot)
            print(json.dumps({"loader": name, "local_batch": 1024, "batches_per_s": round(rate, 1),
                              "train_steps_per_s": round(steps, 2), "ratio": round(rate / steps, 1)}), flush=True)


if __name__ == "__main__":
    main()
