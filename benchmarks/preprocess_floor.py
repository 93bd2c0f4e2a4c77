"""The CPU floor of the generic preprocessing path: what its unavoidable parts cost on their own.

On the benchmark's file (benchmarks/gen_columnar_csv.py), each in a fresh process, CPU seconds
(user + system, all threads: the machine is shared, and CPU time is what the load disturbs least):

- ``imports``: the interpreter and the imports of ``dlrm-data preprocess`` (numba included);
- ``startup``: the same, then the first call of each compiled kernel the path uses (numba loads
  its cache: ``kernel_init`` is the difference);
- ``pyarrow``: ``pyarrow.csv.read_csv(FILE)`` alone (the reference of issue 20's goal);
- ``parse``: the schema's columns read by read.read_file (pyarrow's parse and the typed checks);
- ``intern``: the same, plus every vocabulary feature's values (multi-hot bags split) interned
  (kernels.Interner: the exact distinct values, which the vocabularies need).

``floor_seconds`` = intern / cores: the wall time no schedule on this machine can beat before the
time cut-offs, the fit, the vocabularies and the writes are counted; ``goal_seconds`` is the wall
time of 0.5x pyarrow's rate in the same session (pyarrow's own wall time times 2: read it beside
the load).

    .venv/bin/python -m benchmarks.preprocess_floor --input FILE [--rows N] [--repeats 2] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "benchmarks" / "schemas" / "columnar19.toml"

_READ = """
import sys
from pathlib import Path
from dlrm_dist.data.columnar import encode, kernels, read
from dlrm_dist.features.io import load_schema
schema = load_schema(sys.argv[2])
tables = {f.table: kernels.Interner() for f in schema.sparse if f.kind == "vocab"}
rows = 0
for batch in read.read_file(Path(sys.argv[1]), schema, read.BadLines()):
    rows += batch.num_rows
    if sys.argv[3] == "intern":
        for f in schema.sparse:
            if f.kind == "vocab":
                tables[f.table].ids(encode.bags_of(batch, f).values)
print(rows)
"""
_IMPORTS = """
import numpy as np, pyarrow as pa
from dlrm_dist.cli import data_main
from dlrm_dist.data.columnar import kernels, preprocess, staging
"""
_STARTUP = _IMPORTS + """
kernels.Interner().ids(pa.array(["a", "b"] * 600))
kernels.fnv1a(pa.array(["a"]))
kernels.text_order(pa.array(["b", "a"]), np.array([1, 1], np.int64))
kernels.count_ids(np.zeros(2, np.int64), np.ones(2, bool), np.zeros(0, np.int64), np.zeros(2, np.int64))
kernels.model_ids(np.zeros(2, np.int64), np.zeros(1, np.int64), np.zeros(1, np.uint64), np.uint64(1), np.uint64(1),
                  np.zeros(2, np.int64))
"""
PYARROW = "import sys, pyarrow.csv as c; t = c.read_csv(sys.argv[1]); print(t.num_rows)"


def _cpu(cmd: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of a command in a new process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{cmd[:3]} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    py = sys.executable
    cmds = {"imports": [py, "-c", _IMPORTS], "startup": [py, "-c", _STARTUP], "pyarrow": [py, "-c", PYARROW, str(a.input)],
            "parse": [py, "-c", _READ, str(a.input), str(SCHEMA), "parse"],
            "intern": [py, "-c", _READ, str(a.input), str(SCHEMA), "intern"]}
    runs = []
    for _ in range(a.repeats):
        for name, cmd in cmds.items():
            load = round(os.getloadavg()[0], 2)
            cpu, wall = _cpu(cmd)
            runs.append({"what": name, "cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2),
                         "load_1min_before": load})
            print(json.dumps(runs[-1]), flush=True)
    med = {n: {k: statistics.median(r[k] for r in runs if r["what"] == n) for k in ("cpu_seconds", "wall_seconds")}
           for n in cmds}
    cores = os.cpu_count() or 1
    cpu = {n: med[n]["cpu_seconds"] for n in cmds}
    kernel_init = cpu["startup"] - cpu["imports"]
    parts = {"imports": cpu["imports"], "kernel_init": kernel_init, "parse": cpu["parse"] - cpu["imports"],
             "bags_and_interning": cpu["intern"] - cpu["parse"] - kernel_init}
    floor = cpu["intern"] / cores
    summary = {"cores": cores, "median": med, "cpu_seconds": {k: round(v, 2) for k, v in parts.items()},
               "floor_seconds": round(floor, 2),
               "goal_seconds": round(2 * med["pyarrow"]["wall_seconds"], 2),
               "floor_rate_over_pyarrow": round(med["pyarrow"]["wall_seconds"] / floor, 3)}
    print(json.dumps(summary))
    if a.out:
        a.out.write_text(json.dumps({"file": str(a.input), "rows": a.rows, "summary": summary, "runs": runs,
                                     "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1) + "\n")


if __name__ == "__main__":
    main()
