"""The generic preprocessing path beside pyarrow's CSV reader, on the same 19-column file.

Generates (benchmarks/gen_columnar_csv.py, seeded) a --rows CSV: 6 numbers, 10 string
categoricals with vocabularies from 3 to --rows values, a multi-hot column and a time column,
plus the label. Then, in one session, alternating, each in a fresh process timed by the wall
clock (start-up included) with its peak RSS:

- ``pyarrow``: ``pyarrow.csv.read_csv(FILE)`` (all cores, types inferred): the read alone;
- ``new``: ``dlrm-data preprocess --schema benchmarks/schemas/columnar19.toml`` (time split,
  vocabularies, fitted dense steps): one read, cut-offs and fit from the staged columns;
- ``criteo``: with --criteo-rows N, the built-in ``criteo:days=7`` job on N non-repeating raw
  Criteo lines (preprocess_vs_torchrec.make_input, seed 0; or --criteo-input), the same way.

Each run records the 1-minute load average before it (the machine is shared: read the rates
beside it).

Prints one JSON line per run and writes the medians and their ratio to
benchmarks/results/preprocess_columnar.json.

    .venv/bin/python -m benchmarks.preprocess_columnar [--rows 2000000] [--repeats 3] [--base DIR]
        [--criteo-rows 2000000]
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


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or as -m benchmarks.X
from benchmarks import gen_columnar_csv  # noqa: E402
from benchmarks.preprocess_vs_torchrec import cpu_model, installed_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "benchmarks" / "schemas" / "columnar19.toml"
RESULT = ROOT / "benchmarks" / "results" / "preprocess_columnar.json"

PYARROW = "import sys, pyarrow.csv as c; t = c.read_csv(sys.argv[1]); print(t.num_rows)"


def _timed(cmd: list[str], cwd: Optional[Path] = None, env: Optional[dict] = None) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in MB, CPU seconds) of a command in a new process (its own rusage, by wait4)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime


def run(impl: str, src: Path, out: Path, rows: int, schema: Path = SCHEMA, base: Optional[Path] = None) -> dict:
    """One timed run of ``impl``: pyarrow, new (this tree), base (the tree ``base``: the code a
    change is measured against) or criteo."""
    py, cwd, env = sys.executable, None, installed_env(ROOT)
    if impl == "pyarrow":
        cmd = [py, "-c", PYARROW, str(src)]
    else:
        shutil.rmtree(out, ignore_errors=True)
        args = ["preprocess", "--schema", str(schema), "--input", str(src), "--out", str(out), "--no-progress"]
        if impl == "base":  # that tree's package first on the path (python -m puts the working directory first)
            cmd, cwd, env = [py, "-m", "dlrm_dist.cli.data_main", *args], base, installed_env(base)
        else:
            cmd = [str(Path(py).parent / "dlrm-data"), *args]
    load = round(os.getloadavg()[0], 2)
    seconds, rss, cpu = _timed(cmd, cwd, env)
    return {"impl": impl, "rows": rows, "wall_seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "cpu_seconds": round(cpu, 2), "peak_rss_mb": rss, "load_1min_before": load}


def _median(runs: list[dict], impl: str) -> dict:
    mine = [r for r in runs if r["impl"] == impl]
    seconds = statistics.median(r["wall_seconds"] for r in mine)
    return {"runs": len(mine), "wall_seconds": round(seconds, 3), "rows_per_s": round(mine[0]["rows"] / seconds),
            "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in mine), 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "load_1min_before": [min(r["load_1min_before"] for r in mine), max(r["load_1min_before"] for r in mine)]}


def _paired(runs: list[dict], impl: str, other: str) -> float:
    """The median over rounds of ``impl``'s rate over ``other``'s in the same round (the runs are
    recorded round by round, each impl once a round)."""
    mine, theirs = ([r["wall_seconds"] for r in runs if r["impl"] == k] for k in (impl, other))
    return round(statistics.median(t / m for m, t in zip(mine, theirs)), 3)


def _criteo_input(a: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    """(the raw Criteo file, the criteo:days=7 schema written as a file)."""
    from benchmarks import preprocess_vs_torchrec as criteo

    src = a.criteo_input
    if src is None:
        src = tmp / "criteo.tsv"
        criteo.make_input(src, a.criteo_rows)
    return src, criteo.schema_file(tmp)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--old-repeats", type=int, default=0, choices=[0],
                   help="(the driver's three-pass path it ran is gone since session 6: 0 only, kept for old commands)")
    p.add_argument("--input", type=Path, help="an existing file of gen_columnar_csv.py's (else one is generated)")
    p.add_argument("--criteo-rows", type=int, default=0)
    p.add_argument("--criteo-input", type=Path, help="an existing file of preprocess_vs_torchrec.make_input's")
    p.add_argument("--base", type=Path, help="a worktree of the code to compare with (e.g. the session start's): "
                   "run as impl 'base', alternating with the others, --repeats times; its numba cache is warmed first")
    p.add_argument("--out", type=Path, default=RESULT)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = a.input or gen_columnar_csv.write(Path(tmp) / "columnar19.csv", a.rows)
        criteo = _criteo_input(a, Path(tmp)) if a.criteo_rows else None
        size = src.stat().st_size
        runs = []
        if a.base:  # compiles its numba cache (not counted)
            run("base", src, Path(tmp) / "out", a.rows, base=a.base)
        for k in range(a.repeats):
            impls = ["pyarrow", "new"] * (k < a.repeats) + ["base"] * (k < a.repeats and a.base is not None)
            for impl in impls:
                runs.append(run(impl, src, Path(tmp) / "out", a.rows, base=a.base))
                print(json.dumps(runs[-1]), flush=True)
            if criteo and k < a.repeats:
                runs.append(run("criteo", criteo[0], Path(tmp) / "out", a.criteo_rows, criteo[1]))
                print(json.dumps(runs[-1]), flush=True)
    impls = ("pyarrow", "new", "base", "criteo")
    summary = {impl: _median(runs, impl) for impl in impls if any(r["impl"] == impl for r in runs)}
    summary["new_over_pyarrow"] = round(summary["new"]["rows_per_s"] / summary["pyarrow"]["rows_per_s"], 3)
    # The machine's speed drifts within a session: the ratio within each round (its runs are
    # back to back), at the median, is the steadier figure.
    summary["new_over_pyarrow_paired"] = _paired(runs, "new", "pyarrow")
    if "base" in summary:
        summary["base_over_pyarrow"] = round(summary["base"]["rows_per_s"] / summary["pyarrow"]["rows_per_s"], 3)
        summary["new_over_base"] = round(summary["new"]["rows_per_s"] / summary["base"]["rows_per_s"], 2)
        summary["base_over_pyarrow_paired"] = _paired(runs, "base", "pyarrow")
    record = {"file": {"rows": a.rows, "bytes": size, "columns": 19,
                       "generator": "benchmarks/gen_columnar_csv.py (seed 0)", "schema": str(SCHEMA.relative_to(ROOT))},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu_model": cpu_model(),
                          "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
              "date": time.strftime("%Y-%m-%d"), "base": str(a.base) if a.base else None, "summary": summary,
              "runs": runs}
    print(json.dumps(summary))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
