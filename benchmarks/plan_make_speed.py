"""`dlrm-plan make` wall time, start-up included, beside an older tree's on the same tables.

Each run is a fresh ``python -m dlrm_dist.cli.plan_main make`` subprocess (what a user waits for:
imports, reading the tables, planning, writing the plan), on a seeded tables file of N tables
(rows Zipf-skewed from 100 to 10M, dims 16-128, half one-hot and half multi-hot up to 50 ids)
and W cuda ranks with the inputs format's default memory. With ``--old-tree DIR`` (a
``git worktree`` of an earlier commit) the same command runs from that tree, interleaved with
the current one, so both see the same machine load; their plan files must be byte-identical
(plans hold no timings) unless a deliberate plan change came between them: then
``--same-plans-tree DIR`` (e.g. the old tree with the changed partitioner copied in) is run too, and its
plans must equal the current tree's. Also measured: the start-up alone (importing what ``make``
imports), and each run's CPU seconds (user + system), which the machine's load moves less than wall
time. The load average is recorded beside every figure: on a shared machine it moves them.

    .venv/bin/python benchmarks/plan_make_speed.py --sizes 1000 10000 --world-size 64 \\
        --old-tree /tmp/old --same-plans-tree /tmp/old_new_partitioner --repeats 2 \\
        --out benchmarks/results/2026-12-01-plan-make-speed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = "import dlrm_dist.cli.plan_main, dlrm_dist.cli.plan_make, dlrm_dist.planning.planner"


def write_tables(n: int, seed: int, path: Path) -> None:
    """A seeded tables file of ``n`` tables."""
    rng = np.random.default_rng(seed)
    rows = np.round(10 ** (2 + (rng.random(n) ** 2.0) * 5)).astype(int)
    dims = rng.choice([16, 32, 64, 128], n)
    multi = np.round(np.minimum(rng.zipf(1.6, n), 50) * rng.uniform(0.8, 1.25, n), 1)
    pooling = np.maximum(np.where(rng.random(n) < 0.5, 1.0, multi), 1.0)
    tables = [{"name": f"t{i}", "rows": int(rows[i]), "dim": int(dims[i]), "pooling_factor": float(pooling[i])}
              for i in range(n)]
    path.write_text(json.dumps({"about": f"plan_make_speed.py: {n} tables, seed {seed}", "tables": tables}))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _commit(tree: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(tree: Path, args: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (user + system: less moved by the machine's load than wall) of one subprocess."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cpu, start = _cpu_children(), time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, _cpu_children() - cpu, done


def make_once(tree: Path, tables: Path, world_size: int, out: Path) -> dict[str, Any]:
    """One ``dlrm-plan make`` from ``tree``: wall seconds, the planner's own seconds, the load around it."""
    before = _load()
    wall, cpu, done = _run(tree, ["-m", "dlrm_dist.cli.plan_main", "make", "--tables", str(tables),
                                  "--world-size", str(world_size), "-o", str(out), "--json"])
    if done.returncode != 0:
        raise SystemExit(f"dlrm-plan make from {tree} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "planning_s": round(summary["seconds"], 2),
            "bottleneck_ms": summary["estimated_iteration_ms"], "load_before": before, "load_after": _load()}


def startup_once(tree: Path) -> float:
    wall, _, done = _run(tree, ["-c", IMPORTS])
    if done.returncode != 0:
        raise SystemExit(f"importing the planner from {tree} failed: {done.stderr.strip()[-2000:]}")
    return round(wall, 2)


def measure(trees: dict[str, Path], sizes: list[int], world_size: int, repeats: int, work: Path) -> dict[str, Any]:
    """Interleaved runs of every tree on every size; plan files compared byte for byte across trees."""
    results: dict[str, Any] = {"startup_s": {name: [] for name in trees}, "make": []}
    for _ in range(repeats):
        for name, tree in trees.items():
            results["startup_s"][name].append(startup_once(tree))
    for n in sizes:
        tables = work / f"tables_{n}.json"
        write_tables(n, seed=n, path=tables)
        row: dict[str, Any] = {"tables": n, "world_size": world_size, "runs": {name: [] for name in trees}}
        for r in range(repeats):
            for name, tree in trees.items():
                run = make_once(tree, tables, world_size, work / f"plan_{n}_{name}_{r}.json")
                row["runs"][name].append(run)
                print(f"{n} tables / {world_size} ranks, {name}: {run['wall_s']} s wall, {run['cpu_s']} s CPU "
                      f"({run['planning_s']} s planning), load {run['load_before']}", flush=True)
        texts = {name: {(work / f"plan_{n}_{name}_{r}.json").read_bytes() for r in range(repeats)} for name in trees}
        # Each tree's plans against the current tree's: the reference for identity is --same-plans-tree if given
        # (the old tree's plans may differ on purpose), else the old tree.
        row["same_as_current"] = {name: texts[name] == texts["current"] and len(texts[name]) == 1 for name in trees}
        reference = "same_plans" if "same_plans" in trees else "old" if "old" in trees else "current"
        row["plans_identical"] = row["same_as_current"][reference]
        results["make"].append(row)
    return results


def markdown(record: dict[str, Any]) -> str:
    trees = list(record["trees"])
    lines = [f"# `dlrm-plan make` speed ({record['date']})", "",
             f"Machine: {record['machine']}; trees: " + ", ".join(f"{k} = {v['commit']}" for k, v in record["trees"].items()),
             "", "Wall seconds per run, start-up included, then CPU seconds (user + system; planning seconds in "
             "brackets), load average (1/5/15 min) before each run.", "",
             "| tables x ranks | " + " | ".join(trees) + " | plan file equal to current's |", "|---|" + "---|" * len(trees) + "---|"]
    for row in record["results"]["make"]:
        cells = ["<br>".join(f"{r['wall_s']} / {r.get('cpu_s', '-')} CPU ({r['planning_s']}) @ "
                             f"{'/'.join(map(str, r['load_before']))}"
                             for r in row["runs"][t]) for t in trees]
        lines.append(f"| {row['tables']:,} x {row['world_size']} | " + " | ".join(cells)
                     + " | " + ", ".join(f"{t}: {'yes' if same else 'NO'}" for t, same in row["same_as_current"].items()
                                         if t != "current") + " |")
    lines += ["", "Start-up alone (importing what `make` imports), seconds: "
              + "; ".join(f"{t}: {record['results']['startup_s'][t]}" for t in trees), ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="numbers of tables")
    p.add_argument("--world-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--old-tree", type=Path, help="a git worktree of an older commit, run beside this one")
    p.add_argument("--same-plans-tree", type=Path,
                   help="a tree whose plans must equal this one's (e.g. the old code with a deliberately changed "
                        "partitioner), run beside it too")
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    trees = {"current": ROOT, **({"old": args.old_tree.resolve()} if args.old_tree else {}),
             **({"same_plans": args.same_plans_tree.resolve()} if args.same_plans_tree else {})}
    with tempfile.TemporaryDirectory(prefix="plan_make_speed_") as tmp:
        results = measure(trees, args.sizes, args.world_size, args.repeats, Path(tmp))
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": f"{platform.node()}, {os.cpu_count()} cores",
              "trees": {name: {"path": str(tree), "commit": _commit(tree)} for name, tree in trees.items()},
              "results": results}
    text = markdown(record)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return 0 if all(row["plans_identical"] for row in results["make"]) else 1


if __name__ == "__main__":
    sys.exit(main())
