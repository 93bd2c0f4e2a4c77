"""Peak host memory of ``dlrm-export`` against the bytes of the model's tables (float and int8).

A one-step job with large tables is trained on one CPU rank and checkpointed; then each
export runs in a fresh process that imports everything first (and exports a toy model once,
which loads torch.export's machinery), records its resident memory (the baseline), exports,
and reports its peak resident memory (``VmHWM``: ``ru_maxrss`` survives exec, so a child
would report its parent's peak). The figure is
(peak - baseline) / table bytes: what the export costs on top of an idle interpreter.

    python -m benchmarks.export_memory [--rows 1000000 --tables 4 --dim 32] [--json]

Before tables were streamed (read one at a time from the checkpoint into the export) the
export held each table about three times; the README quotes this script's figures.
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

ROOT = Path(__file__).resolve().parents[1]

_EXPORT = """
import io, json, sys
import torch, torchrec, fbgemm_gpu  # noqa: F401 - the baseline includes every import
import torch.distributed.checkpoint  # noqa: F401
from dlrm_dist.serving.export import export_checkpoint
import dlrm_dist.serving.predict, dlrm_dist.checkpoint.unsharded  # noqa: F401
# torch.export's machinery (dynamo, sympy, serialisation) loads on first use: use it once on a toy.
toy = torch.export.export(torch.nn.Linear(2, 1), (torch.zeros(1, 2),))
torch.export.save(toy, io.BytesIO())
del toy
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * {page}
base = rss()
export_checkpoint(sys.argv[1], sys.argv[2], quantize=sys.argv[3], progress=False)
with open("/proc/self/status") as f:  # VmHWM: this process's peak (ru_maxrss would carry its parent's over exec)
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({{"baseline": base, "peak": peak}}))
"""


def schema_toml(tables: int, rows: int, dim: int) -> str:
    """A schema of ``tables`` hashed features of ``rows`` rows each (and one dense feature)."""
    sparse = ",\n".join(f'  {{ name = "f{i}", kind = "hash", buckets = {rows}, dim = {dim} }}' for i in range(tables))
    return f'name = "big"\nlabel = {{ column = "label" }}\ndense = [ {{ name = "d0" }} ]\nsparse = [\n{sparse}\n]\n'


def make_checkpoint(work: Path, tables: int, rows: int, dim: int) -> Path:
    """A one-step checkpoint of a model with the given tables (one CPU rank)."""
    (work / "schema.toml").write_text(schema_toml(tables, rows, dim))
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=1", "-m", "dlrm_dist.train",
           f"--data.schema={work / 'schema.toml'}", "--model.bottom_mlp=1-16-" + str(dim), "--model.top_mlp=16-1",
           "--train.steps=1", "--train.global_batch_size=64", "--train.eval_interval=0", "--train.progress=false",
           "--train.device=cpu", "--sharding-type=table_wise", f"--train.checkpoint_dir={work / 'ckpt'}",
           f"--train.run_dir={work / 'run'}"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return work / "ckpt"


def measure_export(checkpoint: Path, out: Path, quantize: str) -> dict[str, float]:
    """Baseline and peak resident bytes of one export in a fresh process, and its wall time."""
    code = _EXPORT.format(page=os.sysconf("SC_PAGE_SIZE"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(checkpoint), str(out), quantize], check=True, cwd=ROOT,
                          capture_output=True, text=True)
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**figures, "seconds": time.perf_counter() - start}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", type=int, default=4)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    table_bytes = args.tables * args.rows * args.dim * 4
    results = {"tables": args.tables, "rows": args.rows, "dim": args.dim, "table_bytes": table_bytes}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = make_checkpoint(work, args.tables, args.rows, args.dim)
        for quantize in ("none", "int8"):
            m = measure_export(ckpt, work / f"export_{quantize}", quantize)
            m["peak_over_tables"] = (m["peak"] - m["baseline"]) / table_bytes
            results[quantize] = m
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(f"tables: {args.tables} x {args.rows:,} rows x dim {args.dim} = {table_bytes / 2**20:,.0f} MiB float")
        for q in ("none", "int8"):
            m = results[q]
            print(f"  export {q:<5} baseline {m['baseline'] / 2**20:7,.0f} MiB  peak {m['peak'] / 2**20:7,.0f} MiB  "
                  f"(peak - baseline) / tables = {m['peak_over_tables']:.2f}  {m['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
