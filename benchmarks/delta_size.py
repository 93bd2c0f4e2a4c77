"""Delta publishing's size and time against full exports, day after day, as JSON lines.

Trains one run (1 rank, the built-in synthetic data) for --days x --day-steps steps with a
checkpoint at the end of every "day", exports day 1 in full, then writes each later day as a
delta on the chain so far (dlrm-export --since BASE --delta ...), and a full export of the last
day. Per day: the rows each delta carries, its size against the full export's model.pt2, and the
time to write it against a full export's. At the end the chain's scores on the val split are
checked bit for bit against the full export's (dlrm-predict).

    .venv/bin/python benchmarks/delta_size.py [--tables 100000/50000/20000/5000] [--days 4] [--quantize int8]
        [--out benchmarks/results/DATE-delta-size.jsonl]   # (appends its lines)

How many rows a day changes is the number of distinct ids its batches look up (sparse
optimizer updates touch only those rows), so the ratio depends on ids per day against table
rows: the synthetic generator draws ids uniformly, a worst case next to real, skewed traffic.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or as -m benchmarks.X
from dlrm_dist.cli import export_main, predict_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train(work: Path, a: argparse.Namespace) -> Path:
    ckpt = work / "ckpt"
    dim = a.dim
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
           "dlrm_dist.train", f"--data.schema=demo:table_sizes={a.tables}", f"--model.embedding_dim={dim}",
           f"--model.bottom_mlp=13-64-{dim}", "--model.top_mlp=64-1", f"--train.global_batch_size={a.batch}",
           f"--train.steps={a.days * a.day_steps}", f"--train.checkpoint_interval={a.day_steps}",
           "--train.keep_last=0", f"--train.checkpoint_dir={ckpt}", f"--train.run_dir={work / 'run'}",
           "--train.eval_interval=0", "--synthetic.eval_batches=2", "--train.progress=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if proc.returncode:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return ckpt


def emitter(out: Path | None):
    """Prints a record as a JSON line, and appends it to ``out`` when given."""
    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if out is not None:
            with out.open("a") as f:
                f.write(line + "\n")
    return emit


def commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def cli(main, args: list[str]) -> tuple[float, str]:
    """(seconds, stdout) of an in-process CLI run, which must succeed."""
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(args)
    if code:
        raise SystemExit(f"{args} exited {code}")
    return time.perf_counter() - start, out.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(prog="benchmarks/delta_size.py", description=__doc__.splitlines()[0])
    p.add_argument("--tables", default="100000/50000/20000/5000", help="demo schema table rows")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--day-steps", type=int, default=10)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--quantize", choices=("none", "int8"), default="none")
    p.add_argument("--work", type=Path, default=Path("/tmp/dlrm_delta_size"))
    p.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    a = p.parse_args()
    emit = emitter(a.out)
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    start = time.perf_counter()
    ckpt = train(a.work, a)
    emit({"kind": "setup", "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M"), "tables": a.tables,
          "dim": a.dim, "batch": a.batch, "day_steps": a.day_steps, "days": a.days, "quantize": a.quantize,
          "train_seconds": round(time.perf_counter() - start, 1), "machine": platform.machine(),
          "cpus": os.cpu_count(), "load": os.getloadavg()})
    q = ["--quantize", a.quantize, "--no-progress"]
    base = a.work / "day1"
    cli(export_main.main, [str(ckpt), "--step", str(a.day_steps), "--out", str(base), *q])
    chain: list[str] = []
    for day in range(2, a.days + 1):
        step = day * a.day_steps
        out = a.work / f"delta{day}"
        args = [str(ckpt), "--step", str(step), "--since", str(base), "--out", str(out), "--json"]
        seconds, text = cli(export_main.main, args + [x for d in chain for x in ("--delta", d)])
        report = json.loads(text)
        full = a.work / f"full{day}"
        full_seconds, _ = cli(export_main.main, [str(ckpt), "--step", str(step), "--out", str(full), *q])
        full_bytes = sum(f.stat().st_size for f in full.rglob("*") if f.is_file())
        emit({"kind": "day", "day": day, "step": step, "link": report["link"],
              "changed_rows": {t: v["changed"] for t, v in report["tables"].items()},
              "table_rows": {t: v["rows"] for t, v in report["tables"].items()},
              "delta_bytes": report["bytes"], "full_export_bytes": full_bytes,
              "ratio": round(report["bytes"] / full_bytes, 4), "delta_seconds": round(seconds, 2),
              "full_export_seconds": round(full_seconds, 2), "load": os.getloadavg()})
        chain.append(str(out))
    scores = {}
    for name, args in (("chain", [str(base), *[x for d in chain for x in ("--delta", d)]]),
                       ("full", [str(a.work / f"full{a.days}")])):
        cli(predict_main.main, args + ["--split", "val", "--out", str(a.work / f"{name}.npy"), "--no-progress"])
        scores[name] = (a.work / f"{name}.npy").read_bytes()
    emit({"kind": "check", "chain_scores_equal_full_export_bitwise": scores["chain"] == scores["full"]})


if __name__ == "__main__":
    main()
