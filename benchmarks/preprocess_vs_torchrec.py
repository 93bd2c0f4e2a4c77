"""Criteo raw TSV -> binary: dlrm_dist's preprocessing beside TorchRec's tsv_to_npys.

The input is --rows Kaggle-format lines that never repeat: every categorical value is a
fresh random 32-bit hex id (or empty, at the real sample's per-column missing rate), and the
13 counts are drawn column by column from the real 200-row sample (shared/data), so field
widths and missing values follow real data. Ours is timed as a user meets it: the
`dlrm-data preprocess --schema criteo:days=7` job (the built-in schema, written to a file)
in a new process (start-up, line count, parse, encode, write the columnar splits) with all
cores, --repeats times, by the wall clock; TorchRec's ``BinaryCriteoUtils.tsv_to_npys``
converts a --torchrec-rows prefix in process. Prints one JSON line per run; --json-out
also writes them all to a file (benchmarks/results/).

--reference DIR runs another checkout of this repository (e.g. ``git worktree add DIR REV``)
the same way, interleaved with ours (reference first, then ours, then the other order) after
one untimed run of each (numba's caches and the page cache filled), each run with the load
averages (``os.getloadavg``) before it: the machine's other work is in the figures.
--input reuses a file made by ``make_input`` (its rows are counted from the output).

    .venv/bin/python benchmarks/preprocess_vs_torchrec.py [--rows 4000000] [--repeats 3] [--json-out F]
        [--reference DIR] [--input FILE] [--torchrec-rows 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

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


def run_ours(src: Path, out: Path, schema: Path, impl: str = "dlrm_dist", tree: Optional[Path] = None) -> dict:
    """The CLI in a fresh process, timed by the wall clock (start-up included); ``tree``: the
    dlrm_dist of that checkout instead of this one (put first on the path)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "dlrm-data"), "preprocess", "--schema", str(schema), "--input", str(src),
           "--out", str(out), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(tree)) if tree else None
    load = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    seconds = time.perf_counter() - start
    rows = int(proc.stdout.split("rows read ")[1].split()[0].replace(",", ""))
    reported = int(proc.stdout.split("(")[1].split(" rows/s")[0].replace(",", ""))
    shutil.rmtree(out, ignore_errors=True)
    return {"impl": impl, "rows": rows, "wall_seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "tool_reported_rows_per_s": reported, "workers": os.cpu_count(), "load_before": load}


def side_by_side(src: Path, out: Path, schema: Path, reference: Path, repeats: int) -> list[dict]:
    """Ours and the reference alternating (ABBA...), after an untimed run of each."""
    runs = [("reference", reference), ("dlrm_dist", None)]
    for impl, tree in runs:
        run_ours(src, out, schema, impl, tree)
    records = []
    for k in range(repeats):
        for impl, tree in runs if k % 2 == 0 else runs[::-1]:
            records.append(run_ours(src, out, schema, impl, tree))
            print(json.dumps(records[-1]), flush=True)
    return records


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
        if args.reference:
            records += side_by_side(src, Path(tmp) / "out", schema, args.reference.resolve(), args.repeats)
        else:
            for _ in range(args.repeats):
                record(run_ours(src, Path(tmp) / "out", schema))
        if args.torchrec_rows:
            record(run_torchrec(src, args.torchrec_rows, Path(tmp)))
    if args.json_out:
        args.json_out.write_text(json.dumps({"benchmark": "preprocess_vs_torchrec", "rows": records[0]["rows"],
                                             "cpus": os.cpu_count(), "reference": str(args.reference or ""),
                                             "runs": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
