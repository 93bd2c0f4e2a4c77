"""Criteo raw TSV -> binary: dlrm_dist's preprocessing beside TorchRec's tsv_to_npys.

The input is the real 200-row Criteo sample (shared/data) tiled to --rows rows, so field
widths and missing values follow real data. Ours runs the full pipeline (line count, parse,
transform, hash, write .npy days) with all cores, --repeats times; TorchRec's
``BinaryCriteoUtils.tsv_to_npys`` converts a --torchrec-rows prefix (it is ~30x slower).
Prints one JSON line per run.

    .venv/bin/python benchmarks/preprocess_vs_torchrec.py [--rows 4000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from dlrm_dist.data.criteo.preprocess import Options, preprocess

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo_sample_200.tsv"


def make_input(path: Path, rows: int) -> None:
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    block = b"".join(lines) * 1000
    with open(path, "wb") as f:
        for _ in range(rows // (len(lines) * 1000)):
            f.write(block)
        f.write(b"".join(lines[: rows % len(lines)]))


def run_ours(src: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    r = preprocess(Options("kaggle", [src], out, max_ind_range=40_000_000, progress=False))
    seconds = time.perf_counter() - start
    return {"impl": "dlrm_dist", "rows": r.lines, "seconds": round(seconds, 3), "rows_per_s": round(r.lines / seconds),
            "workers": os.cpu_count()}


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
    p.add_argument("--torchrec-rows", type=int, default=100_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "train.txt"
        make_input(src, args.rows)
        for _ in range(args.repeats):
            print(json.dumps(run_ours(src, Path(tmp) / "out")), flush=True)
        print(json.dumps(run_torchrec(src, args.torchrec_rows, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
