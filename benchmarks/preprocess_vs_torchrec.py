"""Criteo raw TSV -> binary: dlrm_dist's preprocessing beside other trees of it and TorchRec's tsv_to_npys.

The input is --rows Kaggle-format lines that never repeat: every categorical value a fresh
random 32-bit hex id (or empty, at the real sample's per-column missing rate), the 13 counts
drawn column by column from the real 200-row sample (shared/data), so field widths and missing
values follow real data. Each implementation is timed as a user meets it: its CLI in a new
process (start-up, line count, parse, encode, write, exit) with all cores, by the wall clock,
with its CPU seconds and peak RSS (wait4's rusage of it and its workers) and the load averages
before it (the machine's other work is in the figures):

- ``dlrm_dist``: the checkout this file is in, ``dlrm-data preprocess --schema criteo:days=7``
  (the built-in schema, written to a file);
- ``reference``: --reference DIR, another checkout of this repository (e.g. the session
  start's ``git worktree add --detach DIR REV``), the same command;
- ``NAME``: --tree NAME=DIR (repeatable), more checkouts, the same command;
- ``old_stack``: --old-stack DIR, a checkout from before the Criteo stack was folded into the
  columnar one (2722061^: ``dlrm-data preprocess --dataset kaggle --max-ind-range 40000000``,
  TorchRec's day files, the same ids and dense values);

each after one untimed run (numba's caches and the page cache filled), then --repeats rounds,
the order rotated every round. A checkout runs as ``python -m dlrm_dist.cli.data_main`` from its
own directory with PYTHONPATH set to it. TorchRec's ``BinaryCriteoUtils.tsv_to_npys`` converts a
--torchrec-rows prefix in process. Prints one JSON line per run; --json-out also writes them all,
with per-implementation medians, to a file (benchmarks/results/). --input reuses a file made by
``make_input`` (its lines are counted).

    .venv/bin/python benchmarks/preprocess_vs_torchrec.py [--rows 4000000] [--repeats 3] [--json-out F]
        [--reference DIR] [--tree NAME=DIR ...] [--old-stack DIR] [--input FILE] [--torchrec-rows 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the checkout this file is in: what "dlrm_dist" runs
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo_sample_200.tsv"


HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
BLOCK = 200_000


def _block(rng: np.random.Generator, fields: list[list[bytes]], n: int) -> bytes:
    """``n`` lines: labels and counts drawn from the sample's columns, fresh random categories."""
    cols = [np.array(fields[0], dtype="S")[rng.integers(0, len(fields[0]), n)]]
    cols += [np.array(fields[j], dtype="S")[rng.integers(0, len(fields[j]), n)] for j in range(1, 14)]
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    for j in range(14, 40):
        v = rng.integers(0, 2**32, n, dtype=np.uint64)
        ids = HEX[(v[:, None] >> shifts) & np.uint64(15)].view("S8").reshape(n)
        missing = rng.random(n) < np.mean([len(x) == 0 for x in fields[j]])
        cols.append(np.where(missing, b"", ids))
    line = cols[0]
    for c in cols[1:]:
        line = np.char.add(np.char.add(line, b"\t"), c)
    return b"\n".join(line.tolist()) + b"\n"


def make_input(path: Path, rows: int, seed: int = 0) -> None:
    sample = [ln.split(b"\t") for ln in SAMPLE.read_bytes().splitlines()]
    fields = [[r[j] for r in sample] for j in range(40)]
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for lo in range(0, rows, BLOCK):
            f.write(_block(rng, fields, min(BLOCK, rows - lo)))


def schema_file(directory: Path) -> Path:
    """The built-in Criteo schema with Kaggle's 7 pseudo-days, as a file the CLI reads."""
    from dlrm_dist.features.builtin import criteo_schema

    path = directory / "criteo_days7.json"
    path.write_text(json.dumps(criteo_schema(days=7).to_dict()))
    return path


def _command(impl: str, src: Path, out: Path, schema: Path, tree: Optional[Path]) -> tuple[list[str], dict]:
    """(argv, subprocess options) of one implementation's preprocessing job."""
    if impl == "old_stack":  # before 2722061: the Criteo stack's own options (MLPerf's 40M hash range)
        args = ["preprocess", "--dataset", "kaggle", "--input", str(src), "--out", str(out),
                "--max-ind-range", "40000000", "--no-progress"]
    else:
        args = ["preprocess", "--schema", str(schema), "--input", str(src), "--out", str(out), "--no-progress"]
    tree = tree or ROOT  # that tree's package first (python -m puts the working directory first on the path)
    return [sys.executable, "-m", "dlrm_dist.cli.data_main", *args], {"cwd": tree, "env": installed_env(tree)}


def cpu_model() -> str:
    """The CPU's model name (Linux): rates from different machines are not comparable (the
    2026-11-23 record ran on an AMD EPYC, later ones on an Intel Xeon at 2.0 GHz)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def installed_env(tree: Path) -> dict[str, str]:
    """A timed run's environment: ``tree``'s package first on the path, bytecode written and read as
    an installed package's is (pip compiles it): a PYTHONDONTWRITEBYTECODE environment would charge
    every run ~0.15 s of compiling the tree's sources."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(tree)}


def run_ours(src: Path, out: Path, schema: Path, impl: str = "dlrm_dist", tree: Optional[Path] = None,
             rows: Optional[int] = None) -> dict:
    """One implementation's job in a fresh process: wall clock (start-up and exit included), CPU
    seconds and peak RSS of it and its workers (wait4), the load averages before it."""
    shutil.rmtree(out, ignore_errors=True)
    cmd, where = _command(impl, src, out, schema, tree)
    load = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, **where)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            err.seek(0)
            raise SystemExit(f"{impl} failed: {err.read().decode()[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    rows = rows if rows is not None else count_lines(src)
    return {"impl": impl, "rows": rows, "wall_seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mb": usage.ru_maxrss // 1024,
            "workers": os.cpu_count(), "load_before": load}


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(64 << 20):
            n += block.count(b"\n")
    return n


def side_by_side(src: Path, out: Path, schema: Path, trees: dict[str, Optional[Path]], repeats: int) -> list[dict]:
    """Every implementation once untimed, then ``repeats`` rounds, the order rotated each round."""
    rows = count_lines(src)
    for impl, tree in trees.items():
        run_ours(src, out, schema, impl, tree, rows)
    order, records = list(trees.items()), []
    for k in range(repeats):
        for impl, tree in order[k % len(order):] + order[: k % len(order)]:
            records.append(run_ours(src, out, schema, impl, tree, rows))
            print(json.dumps(records[-1]), flush=True)
    return records


def summary(records: list[dict]) -> dict:
    """Per implementation: the runs' median wall clock, rows/s at it, median CPU-s, peak RSS and loads."""
    out = {}
    for impl in dict.fromkeys(r["impl"] for r in records if "wall_seconds" in r):
        mine = [r for r in records if r["impl"] == impl]
        wall = statistics.median(r["wall_seconds"] for r in mine)
        out[impl] = {"runs": len(mine), "wall_seconds": round(wall, 3), "rows_per_s": round(mine[0]["rows"] / wall),
                     "rows_per_s_range": [min(r["rows_per_s"] for r in mine), max(r["rows_per_s"] for r in mine)],
                     "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in mine), 2),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                     "load_1min_before": [min(r["load_before"][0] for r in mine), max(r["load_before"][0] for r in mine)]}
    return out


def run_torchrec(src: Path, rows: int, out: Path) -> dict:
    from torchrec.datasets.criteo import BinaryCriteoUtils

    head = out / "head.tsv"
    with open(src, "rb") as f, open(head, "wb") as g:
        for _ in range(rows):
            g.write(f.readline())
    start = time.perf_counter()
    BinaryCriteoUtils.tsv_to_npys(str(head), str(out / "d.npy"), str(out / "s.npy"), str(out / "l.npy"))
    seconds = time.perf_counter() - start
    return {"impl": "torchrec_tsv_to_npys", "rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torchrec-rows", type=int, default=100_000, help="0: skip TorchRec's tsv_to_npys")
    p.add_argument("--json-out", type=Path, help="also write every record to this JSON file")
    p.add_argument("--reference", type=Path, help="a checkout of another commit to run side by side")
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                   help="more checkouts to run side by side, each under its NAME (repeatable)")
    p.add_argument("--old-stack", type=Path, help="a checkout of 2722061^ (the Criteo stack before the columnar one)")
    p.add_argument("--input", type=Path, help="an existing file of make_input's (instead of --rows new lines)")
    args = p.parse_args()
    records = []

    def record(r: dict) -> None:
        records.append(r)
        print(json.dumps(r), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        src = args.input or Path(tmp) / "train.txt"
        if not args.input:
            make_input(src, args.rows)
        schema = schema_file(Path(tmp))
        trees: dict[str, Optional[Path]] = {"dlrm_dist": None}
        if args.reference:
            trees["reference"] = args.reference.resolve()
        if args.old_stack:
            trees["old_stack"] = args.old_stack.resolve()
        for named in args.tree:
            name, _, directory = named.partition("=")
            trees[name] = Path(directory).resolve()
        if len(trees) > 1:
            records += side_by_side(src, Path(tmp) / "out", schema, trees, args.repeats)
        else:
            for _ in range(args.repeats):
                record(run_ours(src, Path(tmp) / "out", schema))
        if args.torchrec_rows:
            record(run_torchrec(src, args.torchrec_rows, Path(tmp)))
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "benchmark": "preprocess_vs_torchrec", "rows": records[0]["rows"], "cpus": os.cpu_count(),
            "platform": platform.platform(), "cpu_model": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "reference": str(args.reference or ""), "old_stack": str(args.old_stack or ""), "trees": args.tree,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "summary": summary(records), "runs": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
